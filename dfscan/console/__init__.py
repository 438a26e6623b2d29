"""The review console: moderators see each verdict under ``/ui``, overrule it, and their decisions become
training data. Pure parts (:mod:`.agreement`, :mod:`.svg`) import the standard library only; the routes are
a thin edge over ``db.reviews``."""
