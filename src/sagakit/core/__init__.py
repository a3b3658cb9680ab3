"""The pure core: saga definitions and the state machine. Standard library only."""
