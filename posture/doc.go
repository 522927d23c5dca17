// Package posture will hold device trust: enrollment and the device CA,
// signed posture reports from `ztna agent`, their per-request checks and
// external signals (EDR, Falco) that quarantine devices. It arrives with the
// device-trust issue; until then the pipeline's device and posture steps do
// not exist, and the edge's assertions leave the device and posture fields
// empty rather than claiming anything about the device.
package posture
