"""Audio in: sources (a capture device, a file) fill a ring from their own thread; the
conditioner and history turn what they captured into the 16 kHz stream the model windows
are cut from.  ``base.AudioSource`` is the contract every source follows."""
