"""Face restoration (GFPGAN, CodeFormer) the way A1111 does it, without facexlib.

facexlib imports numba and filterpy when the package loads and downloads its
weights on first use; the two networks A1111 takes from it (RetinaFace for
detection, ParseNet for the paste mask) are rebuilt here with facexlib's
state-dict layout, so `detection_Resnet50_Final.pth` and `parsing_parsenet.pth`
load as they are, through the studio's safe loader.
"""
from backend.extras.faces.errors import FaceRestoreError
from backend.extras.faces.restorers import FACE_RESTORERS, FaceRestoration, FaceRestorerLibrary

__all__ = ["FACE_RESTORERS", "FaceRestoreError", "FaceRestoration", "FaceRestorerLibrary"]
