# Small key -> bytes records in a folder of the flash filesystem (a directory
# on the unix port), one file each, replaced by rename so a reset mid-write
# leaves the old value.
import os


class Storage:
    def __init__(self, folder):
        self._folder = folder
        try:
            os.mkdir(folder)
        except OSError:
            pass

    def get(self, key):
        try:
            with open(self._folder + "/" + key, "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def put(self, key, value):
        path = self._folder + "/" + key
        with open(path + ".tmp", "wb") as handle:
            handle.write(value)
        os.rename(path + ".tmp", path)
