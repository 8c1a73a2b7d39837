"""Every config key slt_tf knows, with its default: slt_tf/config_schema.py (installed with the
package, so that config files load by path from anywhere). Other configs start from it."""

from slt_tf.config_schema import get_config  # pylint: disable=unused-import
