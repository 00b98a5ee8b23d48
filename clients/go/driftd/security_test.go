package driftd_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/driftd/driftd/clients/go/driftd"
	"github.com/driftd/driftd/clients/go/driftdv1"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate (PEM) into dir and returns their paths.
func pki(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	caKey := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "go test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER := must(x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey))(t)
	caCert := must(x509.ParseCertificate(caDER))(t)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key := must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader))(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		}
		der := must(x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey))(t)
		keyDER := must(x509.MarshalPKCS8PrivateKey(key))(t)
		return writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der),
			writePEM(t, filepath.Join(dir, name+"-key.pem"), "PRIVATE KEY", keyDER)
	}
	ca = writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER)
	serverCert, serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	clientCert, clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return
}

func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func writePEM(t *testing.T, path, kind string, der []byte) string {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestAPIKeyAndMutualTLS runs its own driftd with a keys file, TLS and
// required client certificates.
func TestAPIKeyAndMutualTLS(t *testing.T) {
	if srv == nil {
		t.Skip("DRIFTD_TARGET names an outside server")
	}
	dir := t.TempDir()
	ca, serverCert, serverKey, clientCert, clientKey := pki(t, dir)
	const key = "go-test-writer-key-0123456789"
	sum := sha256.Sum256([]byte(key))
	keys, _ := json.Marshal(map[string]any{"keys": []map[string]any{
		{"name": "go-admin", "sha256": hex.EncodeToString(sum[:]), "role": "admin", "collections": []string{"go-sec-*"}},
	}})
	keysFile := filepath.Join(dir, "keys.json")
	if err := os.WriteFile(keysFile, keys, 0o600); err != nil {
		t.Fatal(err)
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	pair := must(tls.LoadX509KeyPair(clientCert, clientKey))(t)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(must(os.ReadFile(ca))(t))
	secure := &server{
		exe: srv.exe, addr: addr, data: filepath.Join(dir, "chroma"), log: filepath.Join(dir, "driftd.log"),
		env: []string{"DRIFTD_TLS_CERT_FILE=" + serverCert, "DRIFTD_TLS_KEY_FILE=" + serverKey,
			"DRIFTD_TLS_CLIENT_CA_FILE=" + ca, "DRIFTD_API_KEYS_FILE=" + keysFile},
		creds: credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}}),
	}
	if err := secure.start(); err != nil {
		t.Fatal(err)
	}
	defer secure.stop()
	ctx := context.Background()
	mTLS := driftd.TLS{CAFile: ca, CertFile: clientCert, KeyFile: clientKey}

	c := must(driftd.New(addr, driftd.WithAPIKey(key), driftd.WithTLS(mTLS), driftd.WithMaxAttempts(1)))(t)
	defer c.Close()
	if _, err := c.CreateCollection(ctx, "go-sec-ok", &driftdv1.Collection{Dimension: dim}); err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateCollection(ctx, "go-other", &driftdv1.Collection{Dimension: dim})
	if reason, md := driftd.Reason(err); driftd.Code(err) != codes.PermissionDenied || reason != "PERMISSION_DENIED" || md["resource"] != "collections/go-other" {
		t.Fatalf("out of scope: %v", err)
	}

	noKey := must(driftd.New(addr, driftd.WithTLS(mTLS), driftd.WithMaxAttempts(1)))(t)
	defer noKey.Close()
	_, err = noKey.GetCollection(ctx, "go-sec-ok")
	if reason, _ := driftd.Reason(err); driftd.Code(err) != codes.Unauthenticated || reason != "API_KEY_MISSING" {
		t.Fatalf("without a key: %v", err)
	}

	noCert := must(driftd.New(addr, driftd.WithAPIKey(key), driftd.WithTLS(driftd.TLS{CAFile: ca}), driftd.WithMaxAttempts(1)))(t)
	defer noCert.Close()
	if _, err = noCert.GetCollection(ctx, "go-sec-ok"); driftd.Code(err) != codes.Unavailable {
		t.Fatalf("without a client certificate: %v", err)
	}

	if _, err := driftd.New("10.1.2.3:50051", driftd.WithAPIKey(key)); err == nil {
		t.Fatal("an API key over plaintext to a non-loopback target must be refused")
	}
}
