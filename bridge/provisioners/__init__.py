"""jupyter_client kernel provisioners that place kernels off this machine.

``kernelpit-ray-provisioner`` (:class:`RayProvisioner`) starts each kernel in a
Ray actor on a node of a Ray cluster; see docs/scale-out.md.  Importing this
package does not import Ray: that happens when a kernel is launched.
"""

from .cluster import RayUnavailable, ResourcesUnavailable
from .ray_provisioner import RayProvisioner

__all__ = ["RayProvisioner", "RayUnavailable", "ResourcesUnavailable"]
