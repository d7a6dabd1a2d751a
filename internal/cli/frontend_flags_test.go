package cli

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestFrontendFlags(t *testing.T) {
	for _, cmd := range []string{"frontend", "serve"} {
		_, errOut, err := runCLI(t, nil, cmd, "--help")
		if err != nil {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		flags := []string{"secret", "upload-rate", "upload-burst", "trust-proxy", "max-streams", "max-streams-per-client"}
		if cmd == "frontend" {
			flags = append(flags, "max-upload")
		}
		for _, f := range flags {
			if !strings.Contains(errOut, "--"+f+" ("+envName(f)+")") {
				t.Errorf("%s --help lacks --%s with its variable:\n%s", cmd, f, errOut)
			}
		}
	}
	secret := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string // in the error
	}{
		{[]string{"--secret", "c2hvcnQ="}, nil, "openssl rand -base64 32"},
		{[]string{"--secret", "not base64!"}, nil, "openssl rand -base64 32"},
		{nil, map[string]string{"IMGMILL_SECRET": "c2hvcnQ="}, "IMGMILL_SECRET"},
		{nil, map[string]string{"IMGMILL_SECRET": "c2hvcnQ="}, "openssl rand -base64 32"},
		{[]string{"--secret", secret, "--upload-burst", "0"}, nil, "--upload-burst"},
		{[]string{"--secret", secret, "--upload-rate", "-1"}, nil, "--upload-rate"},
	} {
		for _, cmd := range []string{"frontend", "serve"} {
			_, _, err := runCLI(t, c.env, append([]string{cmd}, c.args...)...)
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s %q (env %v): %v, want a usage error naming %s", cmd, c.args, c.env, err, c.want)
			}
		}
	}
	// The secret is never printed, not even as a default.
	_, errOut, _ := runCLI(t, map[string]string{"IMGMILL_SECRET": secret}, "frontend", "--secret", secret, "--help")
	if strings.Contains(errOut, secret) {
		t.Errorf("frontend --help prints the secret:\n%s", errOut)
	}
}
