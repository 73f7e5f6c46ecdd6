"""Model sources: loaders that turn a user's model file into a :class:`~edgeship.converters.registry.Source`.

``keras`` loads Keras 3 / tf_keras / SavedModel / legacy ``.h5`` files after the
allow-list checks in ``keras_safety`` (configs), ``hdf5_safety`` (weights) and
``savedmodel_safety`` (graphs).
"""
