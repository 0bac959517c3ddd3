"""One performer's audio state on its way to the model: the stream (ring -> conditioner ->
history, with its sample and capture clocks), the hop scheduler, the speech track and the
rest pose sent while its input is lost.  Nothing here is shared between performers."""
