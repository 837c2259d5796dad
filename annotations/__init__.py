"""Annotations in and out, in level-0 pixels: ASAP XML, QuPath GeoJSON and NCRF JSON readers, QuPath object
writers (tiles with measurements, classified regions, points), polygon cleaning, a checker of what QuPath
0.4–0.6 accepts, and QuPath project files with a GeoJSON import script."""

from .formats import (ASAP_CLASS_MAP, EXCLUSION, NCRF_CLASS_MAP, Annotation, AnnotationError, read_annotations,
                      tumor_geometry, write_asap_xml)
from .geometry import GRID, clean_polygonal, make_valid_polygonal, polygonal_parts
from .qupath import (DEFAULT_CLASS_COLORS, class_color, feature_collection, point_features, region_features,
                     tile_features, write_geojson)
from .qupath_project import ProjectImage, import_script, write_project
from .regions import tumor_regions
from .validate import check_qupath_feature, check_qupath_geojson

__all__ = [
    "ASAP_CLASS_MAP", "DEFAULT_CLASS_COLORS", "EXCLUSION", "GRID", "NCRF_CLASS_MAP", "Annotation", "AnnotationError",
    "check_qupath_feature", "check_qupath_geojson", "class_color", "clean_polygonal", "feature_collection",
    "make_valid_polygonal", "point_features", "polygonal_parts", "ProjectImage", "import_script", "read_annotations",
    "region_features", "tile_features", "tumor_geometry", "tumor_regions", "write_asap_xml", "write_geojson",
    "write_project",
]
