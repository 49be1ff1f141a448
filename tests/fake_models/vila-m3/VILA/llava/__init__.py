from .entry import *  # noqa: F401,F403  (as upstream: importing llava imports the model chain)
