"""Pictures of perception output (numpy + Pillow)."""
