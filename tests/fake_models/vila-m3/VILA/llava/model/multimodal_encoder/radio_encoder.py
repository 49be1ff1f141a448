from .image_processor import is_tf_available  # noqa: F401


class RADIOVisionTower:
    pass
