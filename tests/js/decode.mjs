// Decodes messages with the CloudEvents JavaScript SDK (its HTTP and Kafka bindings), for
// tests/cloudevents_js.py: stdin is a JSON array of {binding: "http" | "kafka", headers, body,
// key?} (body as UTF-8 text); stdout is a JSON array, one {ok, event} or {ok: false, error} each.
// `event` is what the SDK read: its attributes and `data` (validated by the SDK: strict mode).
import { HTTP, Kafka } from "cloudevents";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const messages = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const decoded = messages.map((m) => {
  try {
    const event =
      m.binding === "kafka"
        ? Kafka.toEvent({ headers: m.headers, key: m.key ?? "", value: m.body, body: m.body })
        : HTTP.toEvent({ headers: m.headers, body: m.body });
    if (Array.isArray(event)) return { ok: false, error: "a batch, not one event" };
    event.validate();
    return { ok: true, event: JSON.parse(JSON.stringify(event.toJSON())) };
  } catch (error) {
    return { ok: false, error: String(error?.message ?? error) + " " + JSON.stringify(error?.errors ?? "") };
  }
});
process.stdout.write(JSON.stringify(decoded));
