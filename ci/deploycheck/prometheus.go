package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// prometheusMade are series Prometheus itself writes for every target or rule.
var prometheusMade = map[string]bool{"up": true, "ALERTS": true, "ALERTS_FOR_STATE": true}

// grafanaVariable matches Grafana's template variables: $name, ${name}, ${name:format}, [[name]].
var grafanaVariable = regexp.MustCompile(`\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]+\]\]`)

// checkPrometheus validates alerting/recording rule files (with the parser and
// validation `promtool check rules` runs: rulefmt.ParseFile) and Grafana
// dashboards (every target's expr parses as PromQL once Grafana's variables are
// substituted), and that every metric they select is one the server exports
// (a family in the exposition file `metrics`) or one Prometheus makes (up,
// ALERTS). With `coverage`, every exported family with one of those prefixes
// must be used by some file.
func checkPrometheus(metrics string, coverage []string, files []string) ([]string, error) {
	exported, err := exportedSeries(metrics)
	if err != nil {
		return nil, err
	}
	p := parser.NewParser(parser.Options{})
	used := map[string]bool{}
	var findings []string
	for _, file := range files {
		exprs := map[string]string{} // where -> expression
		if strings.HasSuffix(file, ".json") {
			var dashboard any
			data, err := os.ReadFile(file)
			if err != nil {
				return nil, err
			}
			if err := json.Unmarshal(data, &dashboard); err != nil {
				return nil, fmt.Errorf("%s: %w", file, err)
			}
			findings = append(findings, dashboardShape(file, dashboard)...)
			collectExprs(dashboard, file, exprs)
		} else {
			groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
			for _, e := range errs {
				findings = append(findings, e.Error())
			}
			if groups == nil {
				continue
			}
			for _, g := range groups.Groups {
				for _, r := range g.Rules {
					exprs[fmt.Sprintf("%s: group %s rule %s%s", file, g.Name, r.Alert, r.Record)] = r.Expr
				}
			}
		}
		if len(exprs) == 0 {
			findings = append(findings, file+": no PromQL expression found")
		}
		for where, expr := range exprs {
			substituted := grafanaVariable.ReplaceAllStringFunc(expr, func(v string) string {
				switch strings.Trim(v, "${}[]") {
				case "__rate_interval", "__interval", "__range":
					return "5m"
				}
				return "x"
			})
			ast, err := p.ParseExpr(substituted)
			if err != nil {
				findings = append(findings, fmt.Sprintf("%s: %q: %v", where, expr, err))
				continue
			}
			parser.Inspect(ast, func(node parser.Node, _ []parser.Node) error {
				vs, ok := node.(*parser.VectorSelector)
				if !ok {
					return nil
				}
				name := vs.Name
				if name == "" {
					findings = append(findings, fmt.Sprintf("%s: %q selects no metric by name", where, expr))
					return nil
				}
				used[name] = true
				if !exported[name] && !prometheusMade[name] {
					findings = append(findings, fmt.Sprintf("%s: metric %s is not exported by the server", where, name))
				}
				return nil
			})
		}
	}
	if len(coverage) > 0 {
		families, err := exportedFamilies(metrics)
		if err != nil {
			return nil, err
		}
		for family, names := range families {
			// x_created: the start time of counter x, which prometheus_client
			// exposes as a family of its own.
			if !hasPrefix(family, coverage) || strings.HasSuffix(family, "_created") {
				continue
			}
			seen := false
			for _, n := range names {
				seen = seen || used[n]
			}
			if !seen {
				findings = append(findings, fmt.Sprintf("metric %s is exported but no rule or panel uses it", family))
			}
		}
	}
	sort.Strings(findings)
	return findings, nil
}

func hasPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// exportedFamilies: each metric family declared by a "# TYPE name type" line
// of a Prometheus text exposition (declared even before it has a sample, as
// prometheus_client does for labelled metrics), and the series names it yields
// (a histogram x: x_bucket, x_sum, x_count...).
func exportedFamilies(path string) (map[string][]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) != 4 || fields[0] != "#" || fields[1] != "TYPE" {
			continue
		}
		name := fields[2]
		switch fields[3] {
		case "histogram", "gaugehistogram":
			out[name] = []string{name + "_bucket", name + "_sum", name + "_count", name + "_created"}
		case "summary":
			out[name] = []string{name, name + "_sum", name + "_count", name + "_created"}
		case "counter":
			base := strings.TrimSuffix(name, "_total")
			out[name] = []string{base + "_total", base + "_created"}
		default:
			out[name] = []string{name}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no \"# TYPE\" line: not a Prometheus text exposition", path)
	}
	return out, nil
}

func exportedSeries(path string) (map[string]bool, error) {
	families, err := exportedFamilies(path)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, names := range families {
		for _, n := range names {
			out[n] = true
		}
	}
	return out, nil
}

// collectExprs finds every "expr" string of a dashboard's targets, at any depth
// (panels, rows' collapsed panels, library panels), and the templating queries.
func collectExprs(node any, where string, out map[string]string) {
	switch v := node.(type) {
	case map[string]any:
		title, _ := v["title"].(string)
		if title != "" {
			where = where + " > " + title
		}
		if expr, ok := v["expr"].(string); ok {
			ref, _ := v["refId"].(string)
			out[where+" "+ref] = expr
		}
		for k, child := range v {
			if k == "templating" {
				continue // label_values(...) queries are Grafana's, not PromQL
			}
			collectExprs(child, where, out)
		}
	case []any:
		for _, child := range v {
			collectExprs(child, where, out)
		}
	}
}

// dashboardShape checks what Grafana needs to import the dashboard: a title, a
// uid, a schemaVersion, panels, and a datasource on every panel with targets.
func dashboardShape(file string, dashboard any) []string {
	d, ok := dashboard.(map[string]any)
	if !ok {
		return []string{file + ": not a JSON object"}
	}
	var findings []string
	for _, key := range []string{"title", "uid", "schemaVersion", "panels"} {
		if _, ok := d[key]; !ok {
			findings = append(findings, fmt.Sprintf("%s: no %q", file, key))
		}
	}
	panels, _ := d["panels"].([]any)
	ids := map[float64]bool{}
	for _, raw := range panels {
		panel, _ := raw.(map[string]any)
		title, _ := panel["title"].(string)
		id, _ := panel["id"].(float64)
		if ids[id] {
			findings = append(findings, fmt.Sprintf("%s: panel %q: duplicate id %v", file, title, id))
		}
		ids[id] = true
		if _, ok := panel["gridPos"]; !ok {
			findings = append(findings, fmt.Sprintf("%s: panel %q has no gridPos", file, title))
		}
		if targets, ok := panel["targets"].([]any); ok && len(targets) > 0 {
			if _, ok := panel["datasource"]; !ok {
				findings = append(findings, fmt.Sprintf("%s: panel %q has no datasource", file, title))
			}
		}
	}
	return findings
}
