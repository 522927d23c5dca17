// Package posture is device trust for the edge: which device a request
// comes from, and whether that device is currently in a state the app
// accepts. It provides the two pipeline steps between identify and
// authorize — device and posture — as plain values and functions the proxy
// calls; it serves no HTTP itself.
//
// # Devices
//
// A device is enrolled once (a device-code flow bound to a signed-in user)
// and receives a short-lived client certificate from the edge's device CA,
// which is separate from the edge's assertion signing keys. The certificate
// identifies the device on every TLS connection; the registry (store-backed,
// cached in memory) knows each device's user, public key, current
// certificate and revocation. See [DeviceCA] and [Devices].
//
// # Posture reports
//
// The agent (package posture/agent) collects a [Report] on a schedule and
// signs it with the device key using [SignReport]. The wire form is
//
//	base64url(payload) "." base64url(r || s)
//
// (no padding, no other characters), where payload is the report as JSON and
// r || s is an ECDSA P-256 signature over SHA-256("ztna posture report v1"
// 0x00 || payload), each half 32 bytes, s in low form. The context string
// keeps any other signature made with the device key from passing as a
// report. A report carries a counter that increases with every report and
// the latest nonce the edge issued to the device, so it can neither be
// replayed nor presented for another device.
//
// The edge decodes a report with [ParseReport], which trusts nothing: the
// size is bounded first, the JSON must be strict (exactly the known field
// names, no key twice, nothing after the object) and every field is within
// the documented limits. [ReportVerifier.Verify] then checks it against the
// device the request authenticated as: same device ID, the device's
// registered key, a counter above the last accepted one, a nonce from the
// [NonceBook] for this device, and a plausible collection time.
//
// Nonces are stateless, so that every replica accepts the nonces of every
// other (an agent behind a load balancer takes its nonce from one replica
// and reports to another): a nonce is base32 of a version byte, its issue
// time in seconds and a 128-bit HMAC-SHA256 over the device ID and that
// time, keyed with a secret every replica loads from the store
// ([LoadNonceKey]). It is valid for its device only, for the nonce TTL
// after its issue time (and a few seconds before it, for clock skew
// between replicas). It proves the report was made after the edge issued a
// nonce for this device; the counter, not the nonce, stops replays.
//
// The edge keeps what it accepted in a [Reports] book: the latest report of
// every device in memory (the per-request lookup) and in the store (for
// restarts), a short history, and the EDR vendors' own check-ins, which
// arrive as signals.
//
// # Signals and quarantine
//
// [ParseFalco] and [ParseSignal] read detection signals (Falcosidekick's
// webhook output, a generic JSON form) as untrusted input. A detection the
// edge acts on isolates a device or user in the [Quarantine] registry
// (store-backed, memory-fast), whose entry says what was detected and how
// to get back; a [Notifier] tells a Slack-compatible webhook.
//
// # Profiles and verdicts
//
// Posture requirements are named [Profile]s in the config, compiled by
// [CompileProfiles]; per-app rules name the profile they need.
// [CompiledProfile.Evaluate] decides from the device's latest accepted
// report and when it arrived, and returns a [Verdict] whose failures say
// what was detected and how to fix it. It is what defeats the known ways
// around a one-time antivirus check:
//
//   - a fake file imitating the install: the EDR process must be running and
//     its executable's SHA-256 must be on the profile's allow-list, so a file
//     that only exists, or a dummy program under the EDR's name, fails;
//   - killing the EDR after authentication: posture is evaluated on every
//     request from the latest report, which must be younger than the
//     profile's max_age, so an agent that stops reporting, or reports the
//     EDR stopped, loses access within that bound;
//   - blocking the EDR's management server: the agent reports when the EDR's
//     manager was last reachable, and a device that has not reached it
//     within the profile's manager window fails.
//
// # What this package never does
//
//   - It never does I/O on the per-request path: Evaluate and the device
//     check read memory and compare values, and Evaluate does not allocate
//     when the device passes.
//   - It never uses a report before ParseReport and Verify have accepted it,
//     never verifies with a key named in the report (only the device's
//     registered key), and never accepts the high-S twin of a signature.
//   - It never treats an unknown state as passing: a property the agent
//     could not determine fails every profile that requires it, and so does
//     a missing or stale report.
//   - It never reads unbounded input and never logs keys (the nonce key
//     included), nonces or certificates' private parts.
package posture
