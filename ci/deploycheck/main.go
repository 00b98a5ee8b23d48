// Command deploycheck validates driftd's deployment files offline, with the
// parsers the real tools use:
//
//	deploycheck dockerfile [-context DIR] Dockerfile
//	    Parses the Dockerfile with BuildKit's parser and linter (the checks of
//	    `docker build --check`), then checks what driftd's image promises:
//	    several stages, a final stage that runs as a numeric non-root USER and
//	    has a HEALTHCHECK and an ENTRYPOINT, and that every COPY source exists
//	    in the build context and is not excluded by the .dockerignore in force
//	    (<Dockerfile>.dockerignore, else <context>/.dockerignore).
//
//	deploycheck servicemonitor FILE...
//	    Decodes every ServiceMonitor in the (multi-document) YAML files
//	    strictly into the Prometheus Operator's own Go type, so an unknown or
//	    mistyped field fails, and checks it selects something and names a port.
//
//	deploycheck prometheus -metrics EXPOSITION [-coverage PREFIX,...] FILE...
//	    Rule files (YAML) through Prometheus's own rulefmt.ParseFile, the
//	    parser and validation of `promtool check rules`; Grafana dashboards
//	    (JSON): every target's expr parses as PromQL with Prometheus's parser.
//	    Every metric selected must be in EXPOSITION (a scrape of the server's
//	    /metrics) or made by Prometheus (up, ALERTS), and every exported family
//	    whose name starts with a PREFIX must be used somewhere.
//
// Exit status 0 when everything passes, 1 with one line per finding otherwise.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: deploycheck dockerfile [-context DIR] Dockerfile | servicemonitor FILE... | prometheus -metrics FILE [-coverage PREFIX,...] FILE...")
		os.Exit(2)
	}
	var findings []string
	var err error
	switch os.Args[1] {
	case "dockerfile":
		fl := flag.NewFlagSet("dockerfile", flag.ExitOnError)
		context := fl.String("context", ".", "the build context directory")
		_ = fl.Parse(os.Args[2:])
		if fl.NArg() != 1 {
			fmt.Fprintln(os.Stderr, "usage: deploycheck dockerfile [-context DIR] Dockerfile")
			os.Exit(2)
		}
		findings, err = checkDockerfile(fl.Arg(0), *context)
	case "servicemonitor":
		findings, err = checkServiceMonitors(os.Args[2:])
	case "prometheus":
		fl := flag.NewFlagSet("prometheus", flag.ExitOnError)
		metrics := fl.String("metrics", "", "the server's /metrics scraped to a file")
		coverage := fl.String("coverage", "", "comma-separated metric name prefixes every one of which must be used")
		_ = fl.Parse(os.Args[2:])
		if *metrics == "" || fl.NArg() == 0 {
			fmt.Fprintln(os.Stderr, "usage: deploycheck prometheus -metrics FILE [-coverage PREFIX,...] FILE...")
			os.Exit(2)
		}
		var prefixes []string
		if *coverage != "" {
			prefixes = strings.Split(*coverage, ",")
		}
		findings, err = checkPrometheus(*metrics, prefixes, fl.Args())
	default:
		fmt.Fprintf(os.Stderr, "deploycheck: unknown check %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploycheck:", err)
		os.Exit(1)
	}
	for _, f := range findings {
		fmt.Println(f)
	}
	if len(findings) > 0 {
		os.Exit(1)
	}
}

func checkDockerfile(path, context string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var findings []string
	add := func(line int, format string, args ...any) {
		findings = append(findings, fmt.Sprintf("%s:%d: %s", path, line, fmt.Sprintf(format, args...)))
	}
	res, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, w := range res.Warnings {
		add(w.Location.Start.Line, "parser: %s", w.Short)
	}
	lint := linter.New(&linter.Config{
		Warn: func(rule, _, _, msg string, loc []parser.Range) {
			line := 0
			if len(loc) > 0 {
				line = loc[0].Start.Line
			}
			add(line, "lint %s: %s", rule, msg)
		},
	})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(stages) < 2 {
		add(1, "want a multi-stage build, found %d stage(s)", len(stages))
	}
	if len(stages) == 0 {
		return findings, nil
	}
	final := stages[len(stages)-1]
	var user, health, entry bool
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.UserCommand:
			user = true
			name, _, _ := strings.Cut(c.User, ":")
			uid, err := strconv.Atoi(name)
			if err != nil || uid == 0 {
				add(c.Location()[0].Start.Line,
					"final USER %q must be a numeric non-root uid (Kubernetes runAsNonRoot checks it)", c.User)
			}
		case *instructions.HealthCheckCommand:
			health = c.Health != nil && len(c.Health.Test) > 0 && c.Health.Test[0] != "NONE"
		case *instructions.EntrypointCommand:
			entry = true
		}
	}
	if !user {
		add(1, "final stage %q has no USER: the image would run as root", final.Name)
	}
	if !health {
		add(1, "final stage %q has no HEALTHCHECK", final.Name)
	}
	if !entry {
		add(1, "final stage %q has no ENTRYPOINT", final.Name)
	}

	matcher, ignoreFile, err := dockerignore(path, context)
	if err != nil {
		return nil, err
	}
	for _, stage := range stages {
		for _, cmd := range stage.Commands {
			c, ok := cmd.(*instructions.CopyCommand)
			if !ok || c.From != "" {
				continue
			}
			line := c.Location()[0].Start.Line
			for _, src := range c.SourcePaths {
				if strings.ContainsAny(src, "$*?[") {
					continue
				}
				n, err := includedFiles(context, src, matcher)
				switch {
				case errors.Is(err, fs.ErrNotExist):
					add(line, "COPY source %q does not exist in the context %s", src, context)
				case err != nil:
					return nil, err
				case n == 0:
					add(line, "COPY source %q is excluded by %s", src, ignoreFile)
				}
			}
		}
	}
	return findings, nil
}

// dockerignore returns the matcher of the ignore file BuildKit would use.
func dockerignore(dockerfile, context string) (*patternmatcher.PatternMatcher, string, error) {
	for _, candidate := range []string{dockerfile + ".dockerignore", filepath.Join(context, ".dockerignore")} {
		f, err := os.Open(candidate)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		defer f.Close()
		patterns, err := ignorefile.ReadAll(f)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", candidate, err)
		}
		m, err := patternmatcher.New(patterns)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", candidate, err)
		}
		return m, candidate, nil
	}
	m, err := patternmatcher.New(nil)
	return m, "(no .dockerignore)", err
}

// includedFiles counts the files under src (a file or a directory, relative to
// the context) that the ignore patterns keep in the build context.
func includedFiles(context, src string, m *patternmatcher.PatternMatcher) (int, error) {
	root := filepath.Join(context, filepath.FromSlash(strings.TrimPrefix(src, "/")))
	if _, err := os.Stat(root); err != nil {
		return 0, err
	}
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(context, p)
		if err != nil {
			return err
		}
		excluded, err := m.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		if !excluded {
			n++
		}
		return nil
	})
	return n, err
}

func checkServiceMonitors(files []string) ([]string, error) {
	var findings []string
	seen := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		for i, doc := range splitYAML(data) {
			var meta struct {
				Kind string `json:"kind"`
			}
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				return nil, fmt.Errorf("%s document %d: %w", file, i, err)
			}
			if meta.Kind != "ServiceMonitor" {
				continue
			}
			seen++
			var sm monitoringv1.ServiceMonitor
			if err := yaml.UnmarshalStrict(doc, &sm); err != nil {
				findings = append(findings, fmt.Sprintf("%s document %d: ServiceMonitor: %v", file, i, err))
				continue
			}
			where := fmt.Sprintf("%s: ServiceMonitor %s", file, sm.Name)
			if sm.APIVersion != monitoringv1.SchemeGroupVersion.String() {
				findings = append(findings, fmt.Sprintf("%s: apiVersion %q, want %q", where, sm.APIVersion, monitoringv1.SchemeGroupVersion))
			}
			if len(sm.Spec.Selector.MatchLabels) == 0 && len(sm.Spec.Selector.MatchExpressions) == 0 {
				findings = append(findings, where+": empty selector (would select every Service)")
			}
			if len(sm.Spec.Endpoints) == 0 {
				findings = append(findings, where+": no endpoints")
			}
			for j, ep := range sm.Spec.Endpoints {
				if ep.Port == "" && ep.TargetPort == nil {
					findings = append(findings, fmt.Sprintf("%s: endpoints[%d] names no port", where, j))
				}
			}
		}
	}
	if seen == 0 {
		findings = append(findings, "no ServiceMonitor found in "+strings.Join(files, ", "))
	}
	return findings, nil
}

// splitYAML splits a multi-document YAML stream on its "---" lines.
func splitYAML(data []byte) [][]byte {
	var docs [][]byte
	var cur []string
	flush := func() {
		doc := strings.TrimSpace(strings.Join(cur, "\n"))
		if doc != "" {
			docs = append(docs, []byte(doc))
		}
		cur = cur[:0]
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimRight(line, " \t\r") == "---" {
			flush()
			continue
		}
		cur = append(cur, line)
	}
	flush()
	return docs
}
