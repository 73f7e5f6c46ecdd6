"""Train the digits CNN that `edgeship demo` uses, then convert it yourself.

    python examples/train_digits.py [WORKDIR]

Writes the calibration and test images (PNG folders, one subfolder per class),
``test.npz`` and the trained ``.keras`` model into WORKDIR (default
``.edgeship-demo``; a model trained before with the same settings is reused),
then prints the ``edgeship convert`` command that turns it into a calibrated
INT8 bundle. ``edgeship demo`` does all of this and measures the result.
"""

from __future__ import annotations

import shlex
import sys

from edgeship.demos.digits import DEFAULT_WORKDIR, prepare_model


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    workdir = argv[0] if argv else DEFAULT_WORKDIR
    p = prepare_model(workdir)
    q = shlex.quote
    print(f"\nmodel:        {p['model_path']}  (Keras test accuracy {100 * p['keras_test_accuracy']:.2f}%)")
    print(f"calibration:  {p['calib_dir']}")
    print(f"test data:    {p['test_npz']}  (images in {p['test_dir']})")
    print("\nConvert it to a calibrated INT8 bundle:")
    print(f"  edgeship convert {q(p['model_path'])} -o out/digits --calib {q(p['calib_dir'])} \\\n"
          f"      --preprocess {p['preprocess']} --eval {q(p['test_npz'])} --labels {','.join(p['labels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
