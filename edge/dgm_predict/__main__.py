import sys

from dgm_predict.predict import main

sys.exit(main())
