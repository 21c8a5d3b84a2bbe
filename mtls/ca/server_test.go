package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"meshgate/mtls"
	"meshgate/mtls/internal/caproto"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	webToken   = "web-token-0123456789abcdef0123456789"
	otherToken = "other-token-0123456789abcdef012345678"
)

var dbID = spiffeid.RequireFromString("spiffe://a.example/ns/default/sa/db")

// serveCA runs a CA server of a.example on 127.0.0.1:0 with bootstrap
// tokens for web (and for an ID of another trust domain), until the test
// ends. It returns the CA, the address and the audit log.
func serveCA(t *testing.T, ttl time.Duration, extraRoots ...*x509.Certificate) (*CA, string, *observer.ObservedLogs) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveCAOn(t, ln, ttl, extraRoots...)
}

// serveCAOn is serveCA on ln.
func serveCAOn(t *testing.T, ln net.Listener, ttl time.Duration, extraRoots ...*x509.Certificate) (*CA, string, *observer.ObservedLogs) {
	t.Helper()
	dir := t.TempDir()
	c, err := Init(filepath.Join(dir, "ca"), td)
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens")
	os.WriteFile(tokens, []byte("# bootstrap tokens\n"+
		webID.String()+" "+webToken+"\n\n"+
		"spiffe://b.example/ns/default/sa/web "+otherToken+"\n"), 0o600)
	core, logs := observer.New(zapcore.InfoLevel)
	srv, err := NewServer(c, ServerOptions{TTL: ttl, TokensFile: tokens, ExtraRoots: extraRoots, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return c, ln.Addr().String(), logs
}

func newClientSource(t *testing.T, addr string, c *CA, id spiffeid.ID, token string) *mtls.CAClientSource {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := mtls.NewCAClientSource(ctx, mtls.CAClientConfig{Server: addr, ID: id, Token: token, Roots: []*x509.Certificate{c.Root()}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func serial(src *mtls.CAClientSource) string {
	return fmt.Sprintf("%x", src.CurrentSVID().Certificates[0].SerialNumber)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServeBootstrapAndRenew: the first certificate comes against the
// token, the next ones against the certificate, each audited.
func TestServeBootstrapAndRenew(t *testing.T) {
	c, addr, logs := serveCA(t, 2*time.Second)
	src := newClientSource(t, addr, c, webID, webToken)
	if src.CurrentSVID().ID != webID {
		t.Fatalf("got a certificate for %s", src.CurrentSVID().ID)
	}
	seen := map[string]bool{serial(src): true}
	waitFor(t, "two renewals", func() bool {
		seen[serial(src)] = true
		return len(seen) >= 3
	})
	issued := logs.FilterMessage("certificate issued").All()
	if len(issued) < 3 {
		t.Fatalf("%d audit lines for 3 certificates", len(issued))
	}
	first, second := issued[0].ContextMap(), issued[1].ContextMap()
	if !strings.HasPrefix(first["auth"].(string), "token sha256:") || first["spiffe_id"] != webID.String() {
		t.Errorf("audit of the first issue: %v", first)
	}
	if second["auth"] != "certificate "+webID.String() {
		t.Errorf("audit of the renewal: %v", second)
	}
	for _, e := range issued {
		if strings.Contains(fmt.Sprint(e.ContextMap()), webToken) {
			t.Errorf("the audit log holds the token: %v", e.ContextMap())
		}
	}
}

// TestServeRenewalUnderTraffic: two workloads whose certificates live 2 s
// handshake with each other without pause while both renew several
// times; not one handshake fails.
func TestServeRenewalUnderTraffic(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 4 s")
	}
	c, addr, _ := serveCA(t, 2*time.Second)
	server := newClientSource(t, addr, c, webID, webToken)
	client := newClientSource(t, addr, c, webID, webToken) // one identity, two sidecars
	ln, err := tls.Listen("tcp", "127.0.0.1:0", mtls.ServerConfig(server, mtls.AuthorizeMemberOf(td)))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				io.Copy(conn, conn)
			})
		}
	})
	defer func() {
		ln.Close()
		wg.Wait()
	}()
	cfg := mtls.ClientConfig(client, mtls.AuthorizeID(webID))
	serials := map[string]bool{}
	var ok, failed int
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); {
		conn, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err == nil {
			_, err = conn.Write([]byte("ping"))
			if err == nil {
				_, err = io.ReadFull(conn, make([]byte, 4))
			}
			if err == nil {
				serials[fmt.Sprintf("%x", conn.ConnectionState().PeerCertificates[0].SerialNumber)] = true
			}
			conn.Close()
		}
		if err != nil {
			failed++
			t.Errorf("connection %d: %v", ok+failed, err)
			continue
		}
		ok++
	}
	if len(serials) < 3 {
		t.Errorf("%d connections saw %d server certificates; want at least 3 (two renewals)", ok, len(serials))
	}
	t.Logf("%d connections, %d failed, %d server certificates", ok, failed, len(serials))
}

// TestServeRootRotation: roots the server is given join the bundle every
// client gets at its next certificate.
func TestServeRootRotation(t *testing.T) {
	next, err := Init(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	c, addr, _ := serveCA(t, time.Hour, next.Root())
	src := newClientSource(t, addr, c, webID, webToken)
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil || len(b.X509Authorities()) != 2 || !b.X509Authorities()[1].Equal(next.Root()) {
		t.Errorf("bundle after the first certificate: %v, %v", b, err)
	}
}

// caller makes raw requests to the CA server: with a client certificate
// or none, with a token or none.
type caller struct {
	t      *testing.T
	addr   string
	client *http.Client
}

type rootsOnly struct {
	bundle *x509bundle.Bundle
	svid   *x509svid.SVID
}

func (r rootsOnly) GetX509SVID() (*x509svid.SVID, error) { return r.svid, nil }
func (r rootsOnly) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return r.bundle, nil
}

func newCaller(t *testing.T, addr string, c *CA, svid *x509svid.SVID) *caller {
	cfg := mtls.ClientConfig(rootsOnly{bundle: c.Bundle(), svid: svid}, mtls.AuthorizeID(caproto.ServerID(td)))
	if svid == nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &caller{t: t, addr: addr, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

func (c *caller) do(method, path, token string, body []byte) (int, string) {
	c.t.Helper()
	req, _ := http.NewRequest(method, "https://"+c.addr+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var e caproto.ErrorResponse
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

func csrBody(t *testing.T, id string, key crypto.Signer) []byte {
	t.Helper()
	u, _ := url.Parse(id)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(caproto.SignRequest{CSR: der})
	return b
}

func TestServeRefusals(t *testing.T) {
	c, addr, logs := serveCA(t, time.Hour)
	anon := newCaller(t, addr, c, nil)
	web := newClientSource(t, addr, c, webID, webToken)
	webSVID, _ := web.GetX509SVID()
	asWeb := newCaller(t, addr, c, webSVID)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := csrBody(t, webID.String(), p256(t))

	for _, tc := range []struct {
		name         string
		caller       *caller
		method, path string
		token        string
		body         []byte
		status       int
		want         string
	}{
		{"no certificate and no token", anon, "POST", caproto.SignPath, "", good, 401,
			"present your current certificate, or a bootstrap token (Authorization: Bearer)"},
		{"unknown token", anon, "POST", caproto.SignPath, "guess-0123456789abcdef0123456789ab", good, 401, "unknown bootstrap token"},
		{"token of another identity", anon, "POST", caproto.SignPath, webToken, csrBody(t, dbID.String(), p256(t)), 403,
			"this bootstrap token is for spiffe://a.example/ns/default/sa/web, not spiffe://a.example/ns/default/sa/db"},
		{"certificate renewing another identity", asWeb, "POST", caproto.SignPath, "", csrBody(t, dbID.String(), p256(t)), 403,
			"the certificate of spiffe://a.example/ns/default/sa/web may renew spiffe://a.example/ns/default/sa/web only"},
		{"identity of another trust domain", anon, "POST", caproto.SignPath, otherToken, csrBody(t, "spiffe://b.example/ns/default/sa/web", p256(t)), 400,
			"issue spiffe://b.example/ns/default/sa/web: trust domain b.example is not this CA's (a.example)"},
		{"RSA key", anon, "POST", caproto.SignPath, webToken, csrBody(t, webID.String(), rsaKey), 400,
			"issue spiffe://a.example/ns/default/sa/web: public key: want ECDSA P-256, got RSA"},
		{"CSR that is not one", anon, "POST", caproto.SignPath, webToken, []byte(`{"csr":"bm90IGEgQ1NS"}`), 400,
			"csr: not a DER PKCS#10 certificate request"},
		{"unknown field", anon, "POST", caproto.SignPath, webToken, []byte(`{"csr":"", "ttl":"10y"}`), 400,
			`request body: json: unknown field "ttl"`},
		{"GET", anon, "GET", caproto.SignPath, webToken, nil, 405, "want POST"},
		{"wrong path", anon, "POST", "/v1/issue", webToken, good, 404, "no such endpoint; POST to /v1/sign"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, msg := tc.caller.do(tc.method, tc.path, tc.token, tc.body)
			if status != tc.status || msg != tc.want {
				t.Errorf("got %d %q\nwant %d %q", status, msg, tc.status, tc.want)
			}
		})
	}
	refused := logs.FilterMessage("certificate refused").All()
	if len(refused) != 8 {
		t.Errorf("%d refusals audited, want 8 (404 and 405 are not requests for a certificate)", len(refused))
	} else if m := refused[0].ContextMap(); m["reason"] != "present your current certificate, or a bootstrap token (Authorization: Bearer)" || m["spiffe_id"] != webID.String() {
		t.Errorf("audit of a refusal: %v", m)
	}
}

func TestNewServerRejectsTokensFile(t *testing.T) {
	c, err := Init(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content, want string
	}{
		{"token too short", webID.String() + " secret\n", "mtls/ca: serve: tokens file FILE, line 1: token shorter than 32 characters; make one with: openssl rand -hex 16"},
		{"not a SPIFFE ID", "# c\nweb " + webToken + "\n", `mtls/ca: serve: tokens file FILE, line 2: "web": scheme is missing or invalid`},
		{"three fields", webID.String() + " " + webToken + " extra\n", "mtls/ca: serve: tokens file FILE, line 1: want a SPIFFE ID, a space and a token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			os.WriteFile(file, []byte(tc.content), 0o600)
			_, err := NewServer(c, ServerOptions{TokensFile: file})
			if want := strings.ReplaceAll(tc.want, "FILE", file); errText(err) != want {
				t.Errorf("error\n got %v\nwant %s", err, want)
			}
		})
	}
	_, err = NewServer(c, ServerOptions{TokensFile: filepath.Join(dir, "none")})
	if want := "mtls/ca: serve: tokens file: open " + filepath.Join(dir, "none") + ": no such file or directory"; errText(err) != want {
		t.Errorf("missing file:\n got %v\nwant %s", err, want)
	}
}

func TestCAClientRejects(t *testing.T) {
	c, addr, _ := serveCA(t, time.Hour)
	other, err := Init(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  mtls.CAClientConfig
		want string
	}{
		{"nothing", mtls.CAClientConfig{}, strings.Join([]string{
			"mtls: CA client: Server: empty; want the host:port of meshgate ca serve",
			"ID: empty; want the SPIFFE ID to obtain",
			"Token: empty; the first certificate needs a bootstrap token",
			"Roots: none; want the CA's root.pem, to verify the CA server",
		}, "\n")},
		{"renewal past the expiry", mtls.CAClientConfig{Server: addr, ID: webID, Token: webToken, Roots: []*x509.Certificate{c.Root()}, RenewAt: 1.5},
			"mtls: CA client: RenewAt 1.5: want a fraction between 0 and 1\nJitter 0.05: want a fraction smaller than RenewAt and 1-RenewAt"},
		{"roots of another CA", mtls.CAClientConfig{Server: addr, ID: webID, Token: webToken, Roots: []*x509.Certificate{other.Root()}},
			`mtls: CA client: first certificate: Post "https://` + addr + `/v1/sign": mtls: peer spiffe://a.example/meshgate/ca: certificate signed by an unknown authority: no chain to a root of the a.example trust bundle`},
		{"wrong token", mtls.CAClientConfig{Server: addr, ID: dbID, Token: webToken, Roots: []*x509.Certificate{c.Root()}},
			"mtls: CA client: first certificate: the CA server refused (403 Forbidden): this bootstrap token is for spiffe://a.example/ns/default/sa/web, not spiffe://a.example/ns/default/sa/db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := mtls.NewCAClientSource(context.Background(), tc.cfg, nil)
			if src != nil {
				src.Close()
			}
			if errText(err) != tc.want {
				t.Errorf("error\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}
