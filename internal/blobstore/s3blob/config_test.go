package s3blob

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestParseURL(t *testing.T) {
	awsEnv := env(map[string]string{"AWS_ACCESS_KEY_ID": "envkey", "AWS_SECRET_ACCESS_KEY": "envsecret"})
	for _, tc := range []struct {
		name   string
		url    string
		getenv func(string) string
		want   Config
	}{
		{
			name: "keys in the URL",
			url:  "s3://images?endpoint=http://127.0.0.1:9000&access_key=K&secret_key=S",
			want: Config{Bucket: "images", Endpoint: "http://127.0.0.1:9000", AccessKey: "K", SecretKey: "S"},
		},
		{
			name:   "keys from the environment",
			url:    "s3://images?endpoint=https://s3.example.com",
			getenv: awsEnv,
			want:   Config{Bucket: "images", Endpoint: "https://s3.example.com", AccessKey: "envkey", SecretKey: "envsecret"},
		},
		{
			name:   "URL keys win over the environment",
			url:    "s3://images?endpoint=http://h:1&access_key=K&secret_key=S",
			getenv: awsEnv,
			want:   Config{Bucket: "images", Endpoint: "http://h:1", AccessKey: "K", SecretKey: "S"},
		},
		{
			name: "region, prefix and escaped values",
			url:  "s3://my-bucket.x/?endpoint=https%3A%2F%2Fminio.local%3A9443&region=eu-west-1&prefix=imgmill/prod/&access_key=K&secret_key=a%2Bb%2Fc%26d",
			want: Config{Bucket: "my-bucket.x", Endpoint: "https://minio.local:9443", Region: "eu-west-1", Prefix: "imgmill/prod/",
				AccessKey: "K", SecretKey: "a+b/c&d"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := tc.getenv
			if getenv == nil {
				getenv = noEnv
			}
			got, err := ParseURL(tc.url, getenv)
			if err != nil {
				t.Fatalf("ParseURL(%q): %v", tc.url, err)
			}
			if got != tc.want {
				t.Fatalf("ParseURL(%q) = %#v, want %#v", tc.url, got, tc.want)
			}
			if host, secure, _ := got.endpoint(); secure != strings.HasPrefix(tc.want.Endpoint, "https:") || host == "" {
				t.Errorf("endpoint() = %q, secure %v", host, secure)
			}
			// String round-trips, except for the secret, which it leaves out.
			again, err := ParseURL(got.String()+"&secret_key=x", noEnv)
			if err != nil {
				t.Fatalf("ParseURL(String()): %v", err)
			}
			again.SecretKey = got.SecretKey
			if again != got {
				t.Errorf("ParseURL(String()) = %#v, want %#v", again, got)
			}
		})
	}
}

func TestParseURLErrors(t *testing.T) {
	const ok = "endpoint=http://127.0.0.1:9000&access_key=K&secret_key=S"
	for _, tc := range []struct {
		url    string
		getenv func(string) string
		want   string // in the error
	}{
		{"http://bucket?" + ok, nil, "scheme must be s3"},
		{"bucket?" + ok, nil, "scheme must be s3"},
		{"s3:bucket?" + ok, nil, "two slashes"},
		{"s3://?" + ok, nil, "no bucket"},
		{"s3:///path?" + ok, nil, "no bucket"},
		{"s3://Bad_Bucket?" + ok, nil, "bucket"},
		{"s3://ab?" + ok, nil, "bucket"},
		{"s3://bucket/some/path?" + ok, nil, "prefix parameter"},
		{"s3://K:S@bucket?" + ok, nil, "access_key and secret_key parameters"},
		{"s3://bucket?" + ok + "#frag", nil, "fragment"},
		{"s3://bucket?access_key=K&secret_key=S", nil, "no endpoint"},
		{"s3://bucket?endpoint=&access_key=K&secret_key=S", nil, "no endpoint"},
		{"s3://bucket?endpoint=ftp://h:1&access_key=K&secret_key=S", nil, "http or https"},
		{"s3://bucket?endpoint=127.0.0.1:9000&access_key=K&secret_key=S", nil, "http or https"},
		{"s3://bucket?endpoint=http://&access_key=K&secret_key=S", nil, "names no host"},
		{"s3://bucket?endpoint=http://h:1/path&access_key=K&secret_key=S", nil, "only scheme://host[:port]"},
		{"s3://bucket?endpoint=http://u:secret_key=S@h:1&access_key=K&secret_key=S", nil, "endpoint must not hold credentials"},
		{"s3://bucket?endpoint=http://h:1", nil, "no credentials"},
		{"s3://bucket?endpoint=http://h:1", env(map[string]string{"AWS_ACCESS_KEY_ID": "K"}), "no credentials"},
		{"s3://bucket?endpoint=http://h:1", env(map[string]string{"AWS_SECRET_ACCESS_KEY": "S"}), "no credentials"},
		{"s3://bucket?endpoint=http://h:1&access_key=K", nil, "both access_key and secret_key"},
		{"s3://bucket?endpoint=http://h:1&secret_key=S", env(map[string]string{"AWS_ACCESS_KEY_ID": "K"}), "both access_key and secret_key"},
		{"s3://bucket?endpoint=http://h:1&access_key=&secret_key=", nil, "no credentials"},
		{"s3://bucket?" + ok + "&secure=true", nil, `unknown URL parameter "secure"`},
		{"s3://bucket?" + ok + "&region=a&region=b", nil, `"region" given 2 times`},
		{"s3://bucket?" + ok + "&prefix=a//b", nil, "prefix"},
		{"s3://bucket?" + ok + "&prefix=../x", nil, "prefix"},
		{"s3://bucket?" + ok + "&prefix=/abs", nil, "prefix"},
		{"s3://bucket?" + ok + "&prefix=a%20b", nil, "prefix"},
		{"s3://bucket?%zz", nil, "malformed"},
		{"s3://bu\x7fcket?" + ok, nil, "malformed"},
	} {
		getenv := tc.getenv
		if getenv == nil {
			getenv = noEnv
		}
		cfg, err := ParseURL(tc.url, getenv)
		if err == nil {
			t.Errorf("ParseURL(%q) = %v, want an error", tc.url, cfg)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseURL(%q) = %v, want an error containing %q", tc.url, err, tc.want)
		}
		if strings.Contains(err.Error(), "secret_key=S") {
			t.Errorf("ParseURL(%q): the error shows the secret key: %v", tc.url, err)
		}
	}
}

func TestConfigHidesSecret(t *testing.T) {
	cfg, err := ParseURL("s3://b-1?endpoint=http://h:1&access_key=visible&secret_key=hunter2-secret", noEnv)
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%s", "%v", "%+v", "%#v", "%q"} {
		out := fmt.Sprintf(verb, cfg)
		if strings.Contains(out, "hunter2") {
			t.Errorf("Sprintf(%s, cfg) = %s shows the secret", verb, out)
		}
		if !strings.Contains(out, "b-1") {
			t.Errorf("Sprintf(%s, cfg) = %s does not name the bucket", verb, out)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	base := Config{Bucket: "bucket", Endpoint: "http://h:1", AccessKey: "K", SecretKey: "S"}
	if err := base.validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
	}{
		{"no bucket", func(c *Config) { c.Bucket = "" }},
		{"no endpoint", func(c *Config) { c.Endpoint = "" }},
		{"no secret", func(c *Config) { c.SecretKey = "" }},
		{"part size too small", func(c *Config) { c.PartSize = MinPartSize - 1 }},
		{"part size too large", func(c *Config) { c.PartSize = maxPartSize + 1 }},
		{"negative stall timeout", func(c *Config) { c.StallTimeout = -time.Second }},
	} {
		c := base
		tc.change(&c)
		if err := c.validate(); err == nil {
			t.Errorf("%s: validate succeeded", tc.name)
		}
	}
	for prefix, want := range map[string]string{"": "", "a": "a/", "a/b/": "a/b/"} {
		c := base
		c.Prefix = prefix
		if got := c.keyPrefix(); got != want {
			t.Errorf("keyPrefix of %q = %q, want %q", prefix, got, want)
		}
	}
}
