"""eden-plugin-greeting: an eden resource plugin written in Python.

Resource type `greeting_message`: a file at `path` that says "Hello, NAME!". Build it into one
executable file (the agent locks its checksum) with:

    python3 -m zipapp examples/plugins/python/greeting -p /usr/bin/python3 -o eden-plugin-greeting

grpcio and protobuf must be importable by that python (pip install grpcio==1.68.1
protobuf==5.29.6).
"""

import hashlib
import json
import os
import sys

import plugin_pb2 as pb
import plugin_pb2_grpc
from eden_plugin import serve


def text_of(config):
    return f"Hello, {config['name']}!\n"


def error(summary, attribute=None):
    return pb.Diagnostic(
        severity=pb.Diagnostic.ERROR,
        summary=summary,
        attribute=[attribute] if attribute else [],
    )


class Greeting(plugin_pb2_grpc.ProviderServicer):
    def GetSchema(self, request, context):
        return pb.GetSchemaResponse(
            name="greeting",
            version="0.1.0",
            resources=[
                pb.ResourceSchema(
                    type="greeting_message",
                    version=1,
                    description="a file that greets someone",
                    attributes=[
                        pb.Attribute(name="path", type="string", required=True, force_new=True),
                        pb.Attribute(name="name", type="string", required=True),
                        pb.Attribute(name="sha256", type="string", computed=True),
                    ],
                )
            ],
        )

    def ValidateResource(self, request, context):
        config = json.loads(request.config_json)
        d = []
        for k in ("path", "name"):
            if not isinstance(config.get(k), str):
                d.append(error(f"{k} is required (a string)", k))
        if isinstance(config.get("path"), str) and not config["path"].startswith("/"):
            d.append(error("path must be absolute", "path"))
        for k in config:
            if k not in ("path", "name"):
                d.append(error(f"greeting_message has no attribute {k!r}", k))
        return pb.ValidateResponse(diagnostics=d)

    def ReadResource(self, request, context):
        config = json.loads(request.config_json)
        try:
            with open(config["path"], "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return pb.ReadResponse(state_json="null")
        text = data.decode("utf-8", "replace")
        name = text[len("Hello, "):-2] if text.startswith("Hello, ") and text.endswith("!\n") else None
        state = {"path": config["path"], "name": name, "sha256": hashlib.sha256(data).hexdigest()}
        return pb.ReadResponse(state_json=json.dumps(state))

    def PlanResource(self, request, context):
        config = json.loads(request.config_json)
        prior = json.loads(request.prior_state_json or "null")
        text = text_of(config).encode()
        planned = {"path": config["path"], "name": config["name"], "sha256": hashlib.sha256(text).hexdigest()}
        if prior is None:
            action, detail = pb.CREATE, f"will write {config['path']}"
        elif prior.get("sha256") != planned["sha256"]:
            action, detail = pb.UPDATE, f"will greet {config['name']} instead of {prior.get('name')}"
        else:
            return pb.PlanResponse(planned_state_json=json.dumps(prior), action=pb.NOOP)
        return pb.PlanResponse(planned_state_json=json.dumps(planned), action=action, detail=detail)

    def ApplyResource(self, request, context):
        config = json.loads(request.config_json)
        path = config["path"]
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
        data = text_of(config).encode()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        print(f"greeting: wrote {path}", file=sys.stderr, flush=True)
        state = {"path": path, "name": config["name"], "sha256": hashlib.sha256(data).hexdigest()}
        return pb.ApplyResponse(new_state_json=json.dumps(state))


if __name__ == "__main__":
    serve(Greeting())
