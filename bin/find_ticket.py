"""`python -m bin.find_ticket`: runs slt_tf/cli/find_ticket.py (installed as `slt-find-ticket`)."""

from slt_tf.cli import find_ticket

if __name__ == "__main__":
  find_ticket.run()
