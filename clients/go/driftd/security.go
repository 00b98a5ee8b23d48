package driftd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
)

// TLS configures TLS to a driftd server started with --tls-cert-file: the CA
// that signed the server's certificate ("" uses the system's roots) and, for a
// server that requires client certificates (--tls-client-ca-file, mutual TLS),
// the client's certificate and key. ServerName overrides the name checked
// against the server's certificate (default: the target's host).
type TLS struct {
	CAFile, CertFile, KeyFile, ServerName string
}

// WithTLS connects over TLS (default: plaintext).
func WithTLS(t TLS) Option { return func(o *options) { o.tls = &t } }

// WithAPIKey sends key as "authorization: Bearer <key>" on every call. Over
// plaintext it is sent only to a loopback target: New fails otherwise, since
// a key crossing a network in plaintext is as good as published.
func WithAPIKey(key string) Option { return func(o *options) { o.apiKey = key } }

func (t TLS) credentials() (credentials.TransportCredentials, error) {
	config := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, err
		}
		config.RootCAs = x509.NewCertPool()
		if !config.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("driftd: no PEM certificate in %s", t.CAFile)
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("driftd: TLS CertFile and KeyFile go together")
	}
	if t.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(config), nil
}

// bearer is the API key as per-RPC credentials.
type bearer struct {
	header string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": b.header}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// loopback reports whether a target's host is 127.0.0.0/8, ::1 or localhost.
func loopback(target string) bool {
	host := target
	for _, prefix := range []string{"dns:///", "passthrough:///", "ipv4:", "ipv6:"} {
		host = strings.TrimPrefix(host, prefix)
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
