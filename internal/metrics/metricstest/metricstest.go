// Package metricstest reads metrics in tests: a scrape of a /metrics endpoint, or a registry gathered in
// process, with lookups of one value by name and labels. Only tests import it.
package metricstest

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are the metric families of one scrape or gather, by name.
type Families map[string]*dto.MetricFamily

// Parse reads the Prometheus text format.
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return fams, nil
}

// Scrape GETs url, a /metrics endpoint, with hc (which sends the token, if one is needed), and fails the
// test unless it answers 200 in the text format.
func Scrape(t testing.TB, hc *http.Client, url string) Families {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %d %q", url, resp.StatusCode, b)
	}
	fams, err := Parse(resp.Body)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	return fams
}

// Gather reads a registry in process.
func Gather(t testing.TB, g prometheus.Gatherer) Families {
	t.Helper()
	list, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	fams := Families{}
	for _, f := range list {
		fams[f.GetName()] = f
	}
	return fams
}

// Has reports whether the family name has at least one series.
func (f Families) Has(name string) bool {
	return f[name] != nil && len(f[name].GetMetric()) > 0
}

// Value is the sum of the series of name that carry all of labels (name, value pairs): a counter's or
// gauge's value, a histogram's sample count; 0 when no series matches.
func (f Families) Value(name string, labels ...string) float64 {
	var sum float64
	for _, m := range f.series(name, labels) {
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.GetUntyped() != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// Sum is the sum of the observations of the histogram series of name that carry all of labels.
func (f Families) Sum(name string, labels ...string) float64 {
	var sum float64
	for _, m := range f.series(name, labels) {
		sum += m.GetHistogram().GetSampleSum()
	}
	return sum
}

// Labels lists the label sets of name's series, each as name=value pairs in the exposition's order.
func (f Families) Labels(name string) [][]string {
	var out [][]string
	for _, m := range f.series(name, nil) {
		var pairs []string
		for _, l := range m.GetLabel() {
			pairs = append(pairs, l.GetName()+"="+l.GetValue())
		}
		out = append(out, pairs)
	}
	return out
}

func (f Families) series(name string, labels []string) []*dto.Metric {
	if len(labels)%2 != 0 {
		panic("metricstest: labels must be name, value pairs")
	}
	fam := f[name]
	if fam == nil {
		return nil
	}
	var out []*dto.Metric
	for _, m := range fam.GetMetric() {
		if matches(m, labels) {
			out = append(out, m)
		}
	}
	return out
}

func matches(m *dto.Metric, labels []string) bool {
	for i := 0; i < len(labels); i += 2 {
		if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
			return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}
