"""Paper setting: CelebA 64x64, GFMN ResNet generator (filters 1024..64), ticket keeping 10%.

Command (needs CelebA prepared in TFDS, which requires a manual download, and InceptionV3
weights, or a local weights file via --config.features.weights=PATH):
  python -m bin.find_ticket --config=configs/celeba64_resnet.py --workdir=runs/celeba64_resnet
Images: centre crop 140x140 then resize to 64x64 (slt_tf/data.py). Hyperparameters as in
configs/cifar10_resnet.py (docs/method.md). Needs GPUs; no result of slt_tf is published for it yet.
Which FID: as in configs/cifar10_resnet.py, `inception_v3` (Keras ImageNet, not comparable to
published FIDs) unless --config.eval.network=fid_inception --config.eval.weights=PATH (the 2015
FID Inception graph of published numbers; slt_tf/fid_inception.py).
"""

from slt_tf import config_schema

cifar10_resnet = config_schema.load_sibling(__file__, "cifar10_resnet")


def get_config():
  config = cifar10_resnet.get_config()
  config.dataset.name = "celeb_a"
  config.dataset.image_size = 64
  config.generator.name = "resnet64"
  return config
