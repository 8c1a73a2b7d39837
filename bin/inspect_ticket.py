"""`python -m bin.inspect_ticket`: runs slt_tf/cli/inspect_ticket.py (installed as `slt-inspect-ticket`)."""

from slt_tf.cli import inspect_ticket

if __name__ == "__main__":
  inspect_ticket.run()
