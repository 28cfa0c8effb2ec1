"""Faces in images: geometry and the Face type (geometry), detectors (YuNet, MTCNN, Haar;
detectors), chips cut as a model was trained (alignment), videos (videos), and drawing (drawing).
Imports gender_age.core only."""
