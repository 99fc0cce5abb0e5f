"""The operator panel: approve/reject buttons and the lamps that show what a press would decide."""
