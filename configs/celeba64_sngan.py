"""Paper setting: CelebA 64x64, SNGAN generator (256-channel residual blocks), keep 10%.

Command (needs CelebA prepared in TFDS and InceptionV3 weights or a local weights file):
  python -m bin.find_ticket --config=configs/celeba64_sngan.py --workdir=runs/celeba64_sngan
Hyperparameters as in configs/cifar10_resnet.py (docs/method.md). Needs GPUs; no result of slt_tf is published for it yet.
Which FID: as in configs/cifar10_resnet.py, `inception_v3` (Keras ImageNet, not comparable to
published FIDs) unless --config.eval.network=fid_inception --config.eval.weights=PATH (the 2015
FID Inception graph of published numbers; slt_tf/fid_inception.py).
"""

from slt_tf import config_schema

celeba64_resnet = config_schema.load_sibling(__file__, "celeba64_resnet")


def get_config():
  config = celeba64_resnet.get_config()
  config.generator.name = "sngan64"
  return config
