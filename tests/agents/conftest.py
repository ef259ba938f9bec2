from traffic.scripted_teacher import scripted_teacher

__all__ = ["scripted_teacher"]  # the fixture, for this folder's tests
