"""Generated stubs of proto/adore/v1/adore.proto (tools/regen_protos.py writes them; do not edit)."""
