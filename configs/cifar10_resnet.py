"""Paper setting: CIFAR-10 32x32, GFMN ResNet generator, ticket keeping 10%, Inception features.

Command (needs CIFAR-10 prepared in TFDS and InceptionV3 ImageNet weights; offline, pass a
local file with --config.features.weights=/path/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5):
  tfds build cifar10 --data_dir=$HOME/tensorflow_datasets
  python -m bin.find_ticket --config=configs/cifar10_resnet.py --workdir=runs/cifar10_resnet
Hyperparameters (docs/method.md): Adam on the scores lr 5e-5, betas (0.5, 0.999), batch 64, latent
128, AMA lr 1e-5; frozen weights N(0, 0.02) and scores U(-0.1, 0.1), as the released code ends
up initialising them. The paper trains for days on GPUs; no result of slt_tf is published for it yet (a step of
this generator with Inception features takes seconds on 2 CPU cores). Evaluate with bin/evaluate.py
(FID on 10k samples against the test split).

Which FID: by default eval.network is `inception_v3`, Keras' ImageNet InceptionV3 pool3. That
FID is NOT the published one and must not be compared with the paper's numbers (metrics.json
and bin/evaluate's line name the network). Published FIDs use the 2015 FID Inception graph:
  --config.eval.network=fid_inception --config.eval.weights=/path/fid_inception.npz
with pytorch-fid's pt_inception-2015-12-05 weights converted as slt_tf/fid_inception.py says
(docs/method.md, "Evaluation protocol"); slt_tf neither ships nor downloads those weights.
"""

from slt_tf import config_schema as default


def get_config():
  config = default.get_config()
  config.num_steps = 100_000
  config.batch_size = 64
  config.learning_rate = 5e-5
  config.loss.ama_learning_rate = 1e-5
  config.dataset.name = "cifar10"
  config.dataset.image_size = 32
  config.generator.name = "resnet32"
  config.generator.weight_init = "normal_002"
  config.generator.score_init = "uniform_01"
  config.features.name = "inception_v3"
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 100
  config.sample_every_steps = 2000
  config.eval.network = "inception_v3"
  return config
