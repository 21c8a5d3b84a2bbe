package demo

import (
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Step names what a run has just done, for Options.Progress; the comment
// of each says which fields of the Report it filled in.
type Step int

// The steps of a run, in order. A failed run stops after its last step
// done, then cleans up.
const (
	// PodsMade: Pods. The lab's pods exist; their apps start next.
	PodsMade Step = iota + 1
	// CertsIssued: TrustDomain. The apps listen, the mesh CA is made and
	// every meshed pod has a certificate.
	CertsIssued
	// Enrolling: enrollment of the meshed pods begins.
	Enrolling
	// Enrolled: the last of Sidecars. One pod is enrolled.
	Enrolled
	// TrafficStarts: the client begins sending.
	TrafficStarts
	// SentByAddress: Requests and Median.
	SentByAddress
	// Downloaded: DownloadBytes and DownloadTime.
	Downloaded
	// Echoed: EchoSessions and EchoBytes.
	Echoed
	// PolicyDenied: Policy and Denied. web's policy refused client's
	// requests that it does not allow.
	PolicyDenied
	// SentByName: Service, ByName and Served.
	SentByName
	// OutsiderRefused: the pod without a sidecar was refused by web.
	OutsiderRefused
	// Measured: Stats. The sidecars' counters have settled and were read.
	Measured
	// CleanedUp: CleanupErr. Everything the run made is removed, or
	// CleanupErr says what could not be. Told only if the lab was built.
	CleanedUp
)

// Denial is a request web's policy refused, and what the client was
// told.
type Denial struct {
	Request string // "DELETE /"
	Status  int
	Reason  string // X-Meshgate-Error
}

// Report is what a run did and saw.
type Report struct {
	// Pods are the lab's pods, the meshed ones first.
	Pods []Pod
	// TrustDomain is the trust domain of the demo's mesh CA.
	TrustDomain spiffeid.TrustDomain
	// Sidecars are the meshed pods' sidecars, in the order enrolled.
	Sidecars []Sidecar
	// Policy is web's policy section (WebPolicy); Denied, the requests
	// it refused.
	Policy string
	Denied []Denial

	// Requests is how many HTTP requests client sent web by address, half
	// over IPv4, half over IPv6, a new connection each; Median is their
	// median latency.
	Requests int
	Median   time.Duration
	// DownloadBytes is the size of the download from web whose SHA-256
	// was verified; DownloadTime how long it took.
	DownloadBytes int
	DownloadTime  time.Duration
	// EchoSessions is how many raw TCP sessions of EchoBytes each came
	// back intact from echo after client's half-close.
	EchoSessions int
	EchoBytes    int
	// Service is the name of web's two replicas in client's registry;
	// ByName how many HTTP requests went to it by name, and Served how
	// many each replica answered, by pod name.
	Service string
	ByName  int
	Served  map[string]int

	// Stats is what each sidecar saw, per direction that carried
	// connections, read from its /metrics.
	Stats []Stats

	// CleanupErr is what could not be removed at the end, if anything.
	CleanupErr error
}

// Pod is one pod of the lab.
type Pod struct {
	Name       string
	IPv4, IPv6 netip.Addr
	// Role is what the pod does in the demo, in a few words.
	Role string
	// Meshed is whether the pod gets a sidecar.
	Meshed bool
}

// Sidecar is the sidecar enrolled into a pod.
type Sidecar struct {
	Pod string
	PID int
	ID  spiffeid.ID
}

// Stats is what one sidecar counted in one direction ("outbound" or
// "inbound").
type Stats struct {
	Pod       string
	Direction string
	// Connections is the TCP connections opened; HTTPRequests the HTTP
	// requests carried as L7.
	Connections  int64
	HTTPRequests int64
	// SentBytes went from the app to the peer, ReceivedBytes back.
	SentBytes, ReceivedBytes int64
	// Full, Resumed and Failed count mTLS handshakes; PlaintextRefused the
	// plaintext connections strict mTLS refused.
	Full, Resumed, Failed int64
	PlaintextRefused      int64
	// Peers are the verified peers' names (the last part of their SPIFFE
	// IDs), sorted.
	Peers []string
}
