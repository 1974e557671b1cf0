"""A jupyter_client kernel provisioner defined in the tests (tests/test_provisioner_pool.py).

It starts kernels as the local provisioner does, with one environment variable of its own
from its config: proof that a pool launched through it, with its provisioner_config.
"""

from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Unicode


class TaggingProvisioner(LocalProvisioner):  # type: ignore[misc]
    tag = Unicode("", config=True, help="Put in the kernel's environment as KP_PROVISIONER_TAG.")

    async def pre_launch(self, **kwargs):
        kwargs = await super().pre_launch(**kwargs)
        kwargs["env"]["KP_PROVISIONER_TAG"] = self.tag
        return kwargs
