"""eden-plugin-misbehave: a plugin that fails on purpose, for tests/tests/states.rs. Built like
the greeting example (a zipapp with the greeting example's stubs and eden_plugin.py).

- misbehave_crash: writes `path.partial`, then the process dies in the middle of Apply.
- misbehave_hang: Plan never answers.
"""

import json
import os
import time

import plugin_pb2 as pb
import plugin_pb2_grpc
from eden_plugin import serve


class Misbehave(plugin_pb2_grpc.ProviderServicer):
    def GetSchema(self, request, context):
        attrs = [pb.Attribute(name="path", type="string", required=True)]
        return pb.GetSchemaResponse(
            name="misbehave",
            version="0.0.1",
            resources=[
                pb.ResourceSchema(type="misbehave_crash", attributes=attrs),
                pb.ResourceSchema(type="misbehave_hang", attributes=attrs),
            ],
        )

    def ValidateResource(self, request, context):
        return pb.ValidateResponse()

    def ReadResource(self, request, context):
        return pb.ReadResponse(state_json="null")

    def PlanResource(self, request, context):
        if request.type == "misbehave_hang":
            time.sleep(3600)
        return pb.PlanResponse(planned_state_json=request.config_json, action=pb.CREATE)

    def ApplyResource(self, request, context):
        config = json.loads(request.config_json)
        with open(config["path"] + ".partial", "w") as f:
            f.write("half")
        os._exit(3)


if __name__ == "__main__":
    serve(Misbehave())
