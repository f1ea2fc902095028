//go:build tools

// Keeps sigs.k8s.io/jobset (and its main package) in this module's graph.
package tools

import _ "sigs.k8s.io/jobset"
