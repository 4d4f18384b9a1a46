"""Fractional region masks: the fraction of each grid cell inside each region.

* :mod:`.shapes`   region polygons in the equal-area plane (x = λ, y = sin φ)
* :mod:`.dcw`      country and province polygons of GMT's Digital Chart of the World
                   (Debian package ``gmt-dcw``)
* :mod:`.vector`   a user's shapefile / GeoPackage / GeoJSON via geopandas
* :mod:`.fraction` exact area fractions of polygons on a lat/lon grid, overlap handling
* :mod:`.build`    ``tanhui regions build``: sources → mask NetCDF

The masks are read by :func:`inversion.regions.read_regions`.  Building them needs the
``regions`` extra (shapely, and geopandas/pyogrio for vector files); reading them does not.
"""
