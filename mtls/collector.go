package mtls

import (
	"encoding/hex"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CurrentSource is a Source that tells which certificate it presents now:
// DirSource, CAClientSource and WorkloadAPISource are.
type CurrentSource interface {
	Source
	CurrentSVID() *x509svid.SVID
}

// CertCollector exports the certificate a sidecar presents (when it
// expires, which one it is, which root it chains to) and the size of its
// trust bundle: what to watch during a rotation. Register it with the
// sidecar's Prometheus registry.
type CertCollector struct{ src CurrentSource }

// NewCertCollector returns a collector of src's certificate.
func NewCertCollector(src CurrentSource) CertCollector { return CertCollector{src} }

var (
	certExpiryDesc = prometheus.NewDesc("meshgate_tls_certificate_expiry_timestamp_seconds",
		"When the workload certificate the sidecar presents expires (Unix time), by its SPIFFE ID, serial number (hex) "+
			"and the key ID (hex) of the root it chains to, which 'openssl x509 -noout -ext subjectKeyIdentifier' shows for a root.pem.",
		[]string{"spiffe_id", "serial", "root_key_id"}, nil)
	bundleRootsDesc = prometheus.NewDesc("meshgate_tls_trust_bundle_roots",
		"Roots in the sidecar's trust bundle for its own trust domain: 2 while a root rotation is under way.",
		[]string{"trust_domain"}, nil)
)

// Describe implements prometheus.Collector.
func (c CertCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- certExpiryDesc
	ch <- bundleRootsDesc
}

// Collect implements prometheus.Collector.
func (c CertCollector) Collect(ch chan<- prometheus.Metric) {
	svid := c.src.CurrentSVID()
	if svid == nil || len(svid.Certificates) == 0 {
		return
	}
	leaf, top := svid.Certificates[0], svid.Certificates[len(svid.Certificates)-1]
	ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue,
		float64(leaf.NotAfter.Unix()), svid.ID.String(), leaf.SerialNumber.Text(16), hex.EncodeToString(top.AuthorityKeyId))
	td := svid.ID.TrustDomain()
	if b, err := c.src.GetX509BundleForTrustDomain(td); err == nil {
		ch <- prometheus.MustNewConstMetric(bundleRootsDesc, prometheus.GaugeValue, float64(len(b.X509Authorities())), td.Name())
	}
}
