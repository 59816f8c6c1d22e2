"""Writes the FileDescriptorSet of attack.proto with its imports (as `protoc
--include_imports -o` does) to the path given: `python3 descriptors.py OUT`."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(out):
    import grpc_tools
    import google.api.annotations_pb2 as annotations
    from grpc_tools import protoc

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    googleapis = os.path.dirname(os.path.dirname(os.path.dirname(annotations.__file__)))
    args = ["protoc", "-I" + HERE, "-I" + wkt, "-I" + googleapis]
    args += ["--include_imports", "--descriptor_set_out=" + out, "attack.proto"]
    sys.exit(protoc.main(args))


if __name__ == "__main__":
    main(sys.argv[1])
