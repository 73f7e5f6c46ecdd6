"""What a Keras model config may name: explicit allow-lists, as data (see SECURITY.md).

Everything here is a pure tensor computation or a plain value: a layer class,
an initializer, a TensorFlow function behind a tf_keras ``TFOpLambda``, a
Keras 3 op. Anything a config names that is not on these lists is refused by
:mod:`edgeship.converters.sources.keras_safety`. The TensorFlow functions and
Keras 3 ops are the ones TFLite converts to builtin kernels (math, nn, array
manipulation, resize); nothing that reads or writes files, the network, the
Python interpreter, strings, random state or Keras' own settings is listed.
"""

from __future__ import annotations

# keras.layers.<name> (Keras 3) / tf_keras.layers.<name>: built-in layer classes.
# Not listed on purpose: Lambda (bytecode), TFSMLayer (loads another SavedModel),
# TorchModuleWrapper (a pickled torch module), JaxLayer/FlaxLayer (call functions),
# Layer/Wrapper (bases), MelSpectrogram/STFTSpectrogram and the training-only
# augmentation layers (not part of an inference model).
LAYERS = frozenset("""
InputLayer Dense EinsumDense Embedding Masking Identity Activation ActivityRegularization
Conv1D Conv2D Conv3D Conv1DTranspose Conv2DTranspose Conv3DTranspose Convolution1D Convolution2D
Convolution3D Convolution1DTranspose Convolution2DTranspose Convolution3DTranspose
DepthwiseConv1D DepthwiseConv2D SeparableConv1D SeparableConv2D SeparableConvolution1D SeparableConvolution2D
MaxPooling1D MaxPooling2D MaxPooling3D MaxPool1D MaxPool2D MaxPool3D
AveragePooling1D AveragePooling2D AveragePooling3D AvgPool1D AvgPool2D AvgPool3D
GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D
GlobalAveragePooling1D GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D GlobalAvgPool3D
AdaptiveAveragePooling1D AdaptiveAveragePooling2D AdaptiveAveragePooling3D
AdaptiveMaxPooling1D AdaptiveMaxPooling2D AdaptiveMaxPooling3D
BatchNormalization LayerNormalization GroupNormalization UnitNormalization RMSNormalization SpectralNormalization
ReLU LeakyReLU PReLU ELU Softmax ThresholdedReLU
Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise GaussianDropout AlphaDropout
Flatten Reshape Permute RepeatVector Cropping1D Cropping2D Cropping3D ZeroPadding1D ZeroPadding2D ZeroPadding3D
UpSampling1D UpSampling2D UpSampling3D
Add Subtract Multiply Average Maximum Minimum Concatenate Dot
Attention AdditiveAttention MultiHeadAttention GroupQueryAttention
LSTM GRU SimpleRNN RNN LSTMCell GRUCell SimpleRNNCell StackedRNNCells Bidirectional TimeDistributed
ConvLSTM1D ConvLSTM2D ConvLSTM3D
Rescaling Normalization Resizing CenterCrop Discretization CategoryEncoding Hashing HashedCrossing
StringLookup IntegerLookup TextVectorization
RandomFlip RandomRotation RandomZoom RandomTranslation RandomContrast RandomCrop RandomBrightness
""".split())

# tf_keras op layers: the layer classes themselves are allowed, their ``function``
# is checked against TF_FUNCTIONS (and ClassMethod / InstanceMethod /
# InstanceProperty, which call any method of any object, are not).
OP_LAYERS = frozenset({"TFOpLambda", "SlicingOpLambda"})

# Model containers.
MODELS = frozenset({"Functional", "Sequential", "Model"})

# Values nested in layer configs: keras.<category>.<name>.
NESTED = {
    "initializers": """Constant GlorotNormal GlorotUniform HeNormal HeUniform Identity LecunNormal LecunUniform
        Ones Orthogonal RandomNormal RandomUniform TruncatedNormal VarianceScaling Zeros IdentityInitializer
        OrthogonalInitializer STFT STFTInitializer constant glorot_normal glorot_uniform he_normal he_uniform
        identity lecun_normal lecun_uniform ones orthogonal random_normal random_uniform truncated_normal
        variance_scaling zeros""",
    "regularizers": "L1 L2 L1L2 OrthogonalRegularizer l1 l2 l1_l2 orthogonal_regularizer",
    "constraints": "MaxNorm MinMaxNorm NonNeg UnitNorm RadialConstraint max_norm min_max_norm non_neg unit_norm",
    "optimizers": "Adam AdamW Adamax Adadelta Adagrad Adafactor Ftrl Lion Nadam RMSprop SGD LossScaleOptimizer",
    "optimizers.schedules": """ExponentialDecay PiecewiseConstantDecay PolynomialDecay InverseTimeDecay CosineDecay
        CosineDecayRestarts""",
    "losses": """BinaryCrossentropy BinaryFocalCrossentropy CategoricalCrossentropy CategoricalFocalCrossentropy
        CategoricalHinge CosineSimilarity Dice Hinge Huber KLDivergence LogCosh MeanAbsoluteError
        MeanAbsolutePercentageError MeanSquaredError MeanSquaredLogarithmicError Poisson SparseCategoricalCrossentropy
        SquaredHinge Tversky""",
    "metrics": """AUC Accuracy BinaryAccuracy BinaryCrossentropy BinaryIoU CategoricalAccuracy CategoricalCrossentropy
        CategoricalHinge CosineSimilarity F1Score FBetaScore FalseNegatives FalsePositives Hinge IoU KLDivergence
        LogCoshError Mean MeanAbsoluteError MeanAbsolutePercentageError MeanIoU MeanMetricWrapper MeanSquaredError
        MeanSquaredLogarithmicError OneHotIoU OneHotMeanIoU Poisson Precision PrecisionAtRecall R2Score Recall
        RecallAtPrecision RootMeanSquaredError SensitivityAtSpecificity SparseCategoricalAccuracy
        SparseCategoricalCrossentropy SparseTopKCategoricalAccuracy SpecificityAtSensitivity SquaredHinge Sum
        TopKCategoricalAccuracy TrueNegatives TruePositives""",
    "mixed_precision": "Policy DTypePolicy",
    "": "DTypePolicy FloatDTypePolicy QuantizedDTypePolicy QuantizedFloat8DTypePolicy Sequential Model",
}

# Activation (and loss/metric function) names that configs may give as strings
# or as {"class_name": "function", "config": NAME}.
ACTIVATIONS = frozenset("""
linear relu relu6 leaky_relu elu selu gelu silu swish hard_silu sigmoid hard_sigmoid softmax
log_softmax softplus softsign tanh exponential mish celu glu log_sigmoid sparse_plus squareplus
tanh_shrink hard_tanh soft_shrink hard_shrink threshold sparsemax sparse_sigmoid
""".split())
LOSS_FUNCTIONS = frozenset("""
binary_crossentropy categorical_crossentropy sparse_categorical_crossentropy mean_squared_error
mean_absolute_error mean_absolute_percentage_error mean_squared_logarithmic_error huber log_cosh
kl_divergence poisson hinge squared_hinge categorical_hinge cosine_similarity binary_focal_crossentropy
categorical_focal_crossentropy mse mae mape msle binary_accuracy categorical_accuracy
sparse_categorical_accuracy top_k_categorical_accuracy sparse_top_k_categorical_accuracy accuracy acc
""".split())

# tf_keras TFOpLambda / SlicingOpLambda ``function`` names (TensorFlow's export
# table, as tf_keras resolves them). Pure tensor functions with TFLite builtin
# kernels. Aliases (``add`` / ``math.add`` / ``compat.v1.add``) are followed by
# resolving both sides to the same function object.
TF_FUNCTIONS = frozenset("""
__operators__.add __operators__.getitem __operators__.ne __operators__.eq
math.add math.add_n math.subtract math.multiply math.divide math.truediv math.floordiv math.floormod
math.divide_no_nan math.multiply_no_nan math.pow math.sqrt math.rsqrt math.square math.squared_difference
math.exp math.log math.log1p math.abs math.negative math.sign math.sin math.cos math.tanh math.sigmoid
math.maximum math.minimum math.round math.floor math.ceil math.reciprocal math.erf math.softplus
math.reduce_sum math.reduce_mean math.reduce_max math.reduce_min math.reduce_prod math.reduce_any
math.reduce_all math.reduce_euclidean_norm math.reduce_logsumexp math.argmax math.argmin math.top_k
math.cumsum math.equal math.not_equal math.less math.less_equal math.greater math.greater_equal
math.logical_and math.logical_or math.logical_not math.l2_normalize math.scalar_mul math.segment_sum
math.unsorted_segment_sum math.unsorted_segment_max math.is_finite math.is_nan math.atan2
add add_n subtract multiply divide truediv pow sqrt square exp abs negative sign sin cos tanh
maximum minimum round reduce_sum reduce_mean reduce_max reduce_min reduce_prod reduce_any reduce_all
argmax argmin cumsum equal not_equal less less_equal greater greater_equal logical_and logical_or logical_not
matmul linalg.matmul linalg.norm norm linalg.l2_normalize linalg.einsum einsum tensordot linalg.tensordot
linalg.matrix_transpose linalg.band_part
nn.relu nn.relu6 nn.elu nn.selu nn.gelu nn.leaky_relu nn.silu nn.swish nn.softmax nn.log_softmax
nn.sigmoid nn.tanh nn.softplus nn.softsign nn.bias_add nn.l2_normalize nn.batch_normalization
nn.local_response_normalization nn.lrn nn.moments nn.conv1d nn.conv2d nn.conv3d nn.convolution
nn.conv2d_transpose nn.conv1d_transpose nn.depthwise_conv2d nn.separable_conv2d nn.atrous_conv2d
nn.avg_pool nn.avg_pool1d nn.avg_pool2d nn.avg_pool3d nn.max_pool nn.max_pool1d nn.max_pool2d
nn.max_pool3d nn.pool nn.space_to_depth nn.depth_to_space nn.space_to_batch nn.top_k
nn.relu nn.crelu nn.dropout
reshape transpose concat stack unstack split squeeze expand_dims pad tile gather gather_nd slice
strided_slice shape size rank cast identity identity_n stop_gradient zeros_like ones_like zeros ones
fill range where broadcast_to reverse one_hot clip_by_value clip_by_norm ensure_shape
boolean_mask sort argsort searchsorted roll unique meshgrid linspace reverse_sequence
scatter_nd tensor_scatter_nd_update tensor_scatter_nd_add repeat space_to_batch_nd batch_to_space
math.bincount experimental.numpy.take
image.resize image.resize_with_pad image.resize_with_crop_or_pad image.crop_and_resize
image.central_crop image.rgb_to_grayscale image.grayscale_to_rgb image.flip_left_right
image.flip_up_down image.rot90 image.extract_patches image.convert_image_dtype image.per_image_standardization
""".split())

# Keras 3 op classes (module -> class names): functional models record a
# ``keras.ops`` call as one of these. Control-flow ops that take Python callables
# (Map, Scan, Cond, WhileLoop, ForiLoop, VectorizedMap, Switch, AssociativeScan),
# losses and text/signal ops are not listed.
KERAS_OPS = {
    "keras.src.ops.numpy": """Absolute Abs Add All Any Amax Amin Append Arange Argmax Argmin Argsort Average
        BroadcastTo Ceil Clip Concatenate Cos Cosh Cumprod Cumsum Diag Diagonal Diff Digitize Dot Einsum Equal Exp
        Exp2 ExpandDims Expm1 Flip Fliplr Flipud Floor Full FullLike GetItem Greater GreaterEqual Hstack Isfinite Isinf
        Isnan Less LessEqual Linspace Log Log10 Log1p Log2 Logaddexp LogicalAnd LogicalNot LogicalOr LogicalXor Matmul
        Max Maximum Mean Median Meshgrid Min Minimum Mod Moveaxis NotEqual OnesLike ZerosLike Outer Pad Prod Ravel
        Reciprocal Repeat Reshape Roll Round Sign Sin Sinh Size Sort Split Sqrt Square Squeeze Stack Std Subtract Sum
        Swapaxes Take TakeAlongAxis Tan Tanh Tensordot Tile Transpose Tril Triu Trunc Var Vstack Where Multiply Divide
        DivideNoNan TrueDivide Power Negative FloorDivide Select Arctan Arctan2 Arcsin Arccos Fabs Heaviside Hypot""",
    "keras.src.ops.nn": """Relu Relu6 Sigmoid Softplus Softsign Silu LogSigmoid LeakyRelu HardSigmoid HardSilu Elu
        Selu Gelu Celu Glu TanhShrink HardTanh HardShrink SoftShrink Squareplus SparsePlus Threshold Softmax
        LogSoftmax MaxPool AveragePool AdaptiveMaxPool AdaptiveAveragePool Conv DepthwiseConv SeparableConv
        ConvTranspose OneHot MultiHot Moments BatchNorm Normalize DotProductAttention RMSNorm LayerNorm
        DepthToSpace SpaceToDepth""",
    "keras.src.ops.math": "SegmentSum SegmentMax TopK Logsumexp Rsqrt Erf Erfinv ExtractSequences",
    "keras.src.ops.core": "Slice SliceUpdate Scatter ScatterUpdate StopGradient Unstack Cast SaturateCast ConvertToTensor",
    "keras.src.ops.image": "RGBToGrayscale RGBToHSV HSVToRGB Resize PadImages CropImages ExtractPatches AffineTransform",
    "keras.src.ops.linalg": "Norm Inv Det Solve",
}

# Markers Keras writes for plain values inside configs (no lookup, no code).
VALUE_MARKERS = frozenset({"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__tuple__",
                           "__slice__", "__ellipsis__"})

# Config keys whose string value names an activation function.
ACTIVATION_KEYS = frozenset({"activation", "recurrent_activation", "inner_activation"})

# Config keys that name a file (vocabularies, assets): checked as paths.
PATH_KEYS = frozenset({"vocabulary", "vocabulary_path", "idf_weights", "vocab_file", "file", "filename",
                       "filepath", "path", "asset", "asset_path", "salt_file", "oov_file", "stop_words_file"})
