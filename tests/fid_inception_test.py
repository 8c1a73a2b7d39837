"""The 2015 FID Inception network (eval.network=fid_inception), random weights.

The real weights (pytorch-fid's pt_inception-2015-12-05) are not part of slt_tf: these tests
check the architecture against pytorch-fid's (shapes, parameter count, pooling semantics),
the state-dict conversion on random arrays, and the evaluation pipeline end to end.
"""

import math

import slt_tf  # pylint: disable=unused-import  # Sets the Keras backend first.
import keras
import numpy as np
import pytest
import tensorflow as tf

from slt_tf import activations
from slt_tf import evaluation
from slt_tf import features
from slt_tf import fid_inception
from slt_tf import generators
from slt_tf import images as images_lib
from slt_tf.errors import SltError


@pytest.fixture(scope="module")
def model():
  return fid_inception.build_model()


@pytest.fixture(scope="module")
def state(model):
  """A random pytorch-fid state dict (NumPy), with num_batches_tracked as torch saves it."""
  rng = np.random.default_rng(0)
  values = {}
  for key, shape in fid_inception.state_dict_shapes(model).items():
    if key.endswith("running_var"):
      values[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      values[key] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    if key.endswith(".bn.weight"):
      values[key.replace(".weight", ".num_batches_tracked")] = np.array(0, np.int64)
  return values


@pytest.mark.e2e
def test_the_architecture_is_pytorch_fids(model):
  # torchvision inception_v3 without aux logits, 1008 classes: 23,834,568 + 8 * 2049.
  assert sum(math.prod(v.shape) for v in model.trainable_weights) == 23_850_960
  assert [tuple(o.shape) for o in model.outputs] == [(None, 2048), (None, 1008)]
  shapes = fid_inception.state_dict_shapes(model)
  assert len(shapes) == 94 * 5 + 2  # 94 BasicConv2d (conv + 4 bn tensors) and fc.
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert shapes["fc.weight"] == (1008, 2048)
  for block, size in (("Mixed_5d", 35), ("Mixed_6e", 17), ("Mixed_7c", 8)):
    assert model.get_layer(block).output.shape[1] == size


def test_pool_branches_follow_the_2015_graph(model):
  # FIDInceptionA/C/E_1 average-pool; FIDInceptionE_2 (Mixed_7c) max-pools.
  for block in ("Mixed_5b", "Mixed_6b", "Mixed_7b"):
    assert isinstance(model.get_layer(f"{block}_avgpool"), keras.layers.AveragePooling2D)
  assert isinstance(model.get_layer("Mixed_7c_maxpool"), keras.layers.MaxPooling2D)
  assert "Mixed_7c_avgpool" not in [layer.name for layer in model.layers]


def test_average_pools_exclude_the_padding_like_count_include_pad_false(model):
  pool = model.get_layer("Mixed_5b_avgpool")
  x = np.random.default_rng(1).standard_normal((1, 5, 6, 2)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ones = np.pad(np.ones_like(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  sums = sum(padded[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3))
  counts = sum(ones[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3))
  np.testing.assert_allclose(pool(x), sums / counts, rtol=1e-5, atol=1e-6)


@pytest.mark.e2e
def test_state_dict_conversion_puts_every_tensor_in_its_place(model, state, tmp_path):
  path = str(tmp_path / "fid.npz")
  np.savez(path, **state)
  fresh = fid_inception.build(path)
  conv = fresh.get_layer("Mixed_6b_branch7x7_2_conv").kernel.numpy()
  np.testing.assert_array_equal(conv, state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  bn = fresh.get_layer("Mixed_7c_branch_pool_bn")
  for variable, key in ((bn.gamma, "weight"), (bn.beta, "bias"), (bn.moving_mean, "running_mean"),
                        (bn.moving_variance, "running_var")):
    np.testing.assert_array_equal(variable.numpy(), state[f"Mixed_7c.branch_pool.bn.{key}"])
  np.testing.assert_array_equal(fresh.get_layer("fc").kernel.numpy(), state["fc.weight"].T)
  # The first BasicConv2d computed in NumPy with torch's layouts: conv(3x3, stride 2, no
  # padding) -> (x - mean) / sqrt(var + 0.001) * weight + bias -> ReLU.
  images = np.random.default_rng(2).uniform(-1, 1, (1, 299, 299, 3)).astype(np.float32)
  stem = keras.Model(fresh.input, fresh.get_layer("Conv2d_1a_3x3_relu").output)
  got = np.asarray(stem(images))[0]
  weight = state["Conv2d_1a_3x3.conv.weight"].astype(np.float64)  # [out, in, kh, kw]
  patches = np.stack([images[0, i:i + 297:2, j:j + 297:2, :] for i in range(3) for j in range(3)],
                     axis=-1).reshape(149, 149, 3, 3, 3)  # [y, x, in, kh, kw]
  conv = np.einsum("yxcij,ocij->yxo", patches.astype(np.float64), weight)
  bn_key = "Conv2d_1a_3x3.bn."
  want = np.maximum(0, (conv - state[bn_key + "running_mean"]) / np.sqrt(
      state[bn_key + "running_var"] + 1e-3) * state[bn_key + "weight"] + state[bn_key + "bias"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.e2e
def test_keras_weights_file_round_trips(state, tmp_path):
  npz = str(tmp_path / "fid.npz")
  np.savez(npz, **state)
  first = features.build_eval_network("fid_inception", image_size=32, channels=3, weights=npz)
  h5 = str(tmp_path / "fid.weights.h5")
  first.model.save_weights(h5)
  second = features.build_eval_network("fid_inception", image_size=32, channels=3, weights=h5)
  assert first.fingerprint == second.fingerprint


@pytest.mark.e2e
@pytest.mark.parametrize("weights,message", [
    ("default", r"fid_inception needs eval.weights=PATH"),
    ("/nonexistent/fid.npz", r"is not an existing .npz"),
])
def test_bad_weights_are_one_line_errors(weights, message):
  with pytest.raises(SltError, match=message) as error:
    fid_inception.build(weights)
  assert "\n" not in str(error.value)


@pytest.mark.e2e
def test_a_state_dict_with_wrong_keys_or_shapes_is_one_line(state):
  broken = dict(state)
  broken.pop("fc.bias")
  broken["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  with pytest.raises(SltError, match=r"1 keys missing \(fc.bias...\) and 1 unknown"):
    fid_inception.keras_weights_from_state_dict(broken)
  wrong = dict(state, **{"fc.bias": np.zeros(1000, np.float32)})
  with pytest.raises(SltError, match=r"fc.bias has shape \[1000\]; it needs \[1008\]"):
    fid_inception.keras_weights_from_state_dict(wrong)


@pytest.mark.e2e
def test_the_evaluation_pipeline_names_the_network(state, tmp_path):
  npz = str(tmp_path / "fid.npz")
  np.savez(npz, **state)
  network = features.build_eval_network("fid_inception", image_size=8, channels=3, weights=npz)
  spec = generators.GeneratorSpec(name="dcgan", image_size=8, channels=3, latent_dim=8,
                                  filters=(8, 4))
  rng = np.random.default_rng(3)
  real = activations.dequantize(images_lib.to_uint8(
      tf.constant(rng.uniform(-1, 1, (10, 8, 8, 3)), tf.float32)))
  real_embeddings, real_logits = network(real)
  evaluator = evaluation.Evaluator(network, np.asarray(real_embeddings, np.float64),
                                   np.asarray(real_logits, np.float64), num_samples=10,
                                   batch_size=5)
  metrics = evaluator(generators.build(spec))
  assert metrics["eval_network"] == "fid_inception"
  assert metrics["eval_network_fingerprint"] == network.fingerprint
  assert metrics["fid"] is not None and math.isfinite(metrics["fid"])
