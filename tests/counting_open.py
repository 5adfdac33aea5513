"""safe_open that tells a test about every tensor read: the streaming merge's memory claims are
checked by swapping it in for protege.merge.streaming.safe_open."""

from safetensors import safe_open


def counting_open(on_read):
    """A safe_open replacement calling on_read(path, name, tensor) for each tensor read."""
    return lambda path, framework: CountingOpen(path, framework, on_read)


class CountingOpen:
    def __init__(self, path, framework, on_read):
        self.path, self.on_read = path, on_read
        self.inner = safe_open(path, framework=framework)

    def __enter__(self):
        self.handle = self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def keys(self):
        return self.handle.keys()

    def get_slice(self, name):
        return self.handle.get_slice(name)

    def get_tensor(self, name):
        tensor = self.handle.get_tensor(name)
        self.on_read(self.path, name, tensor)
        return tensor
