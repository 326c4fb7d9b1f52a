// gitops-check evaluates Kubernetes objects the way GitOps tools do, so
// Mahler's tests can prove that Flux and Argo CD understand its health:
//
//	gitops-check kstatus < objects.json
//	    kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status), the library
//	    Flux's health checks use.
//	gitops-check argocd SCRIPT.lua < objects.json
//	    an Argo CD resource.customizations.health script, run in gopher-lua
//	    (the interpreter Argo CD embeds) with the libraries Argo CD opens by
//	    default: package, base and table (no string, no os).
//
// Input is one object or a List (kubectl get -o json). Output is one JSON
// line per object: {"kind","namespace","name","status","message"}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gitops-check:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader, out io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: gitops-check kstatus | argocd SCRIPT.lua  (objects as JSON on stdin)")
	}
	objects, err := read(in)
	if err != nil {
		return err
	}
	var eval func(*unstructured.Unstructured) (string, string, error)
	switch args[0] {
	case "kstatus":
		eval = func(u *unstructured.Unstructured) (string, string, error) {
			r, err := status.Compute(u)
			if err != nil {
				return "", "", err
			}
			return r.Status.String(), r.Message, nil
		}
	case "argocd":
		if len(args) != 2 {
			return fmt.Errorf("usage: gitops-check argocd SCRIPT.lua")
		}
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		eval = func(u *unstructured.Unstructured) (string, string, error) {
			return argocd(string(script), u.Object)
		}
	default:
		return fmt.Errorf("unknown command %q", args[0])
	}
	enc := json.NewEncoder(out)
	for _, u := range objects {
		s, m, err := eval(u)
		if err != nil {
			return fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
		}
		if err := enc.Encode(result{u.GetKind(), u.GetNamespace(), u.GetName(), s, m}); err != nil {
			return err
		}
	}
	return nil
}

func read(in io.Reader) ([]*unstructured.Unstructured, error) {
	data, err := io.ReadAll(in)
	if err != nil {
		return nil, err
	}
	// Integers as int64, as client-go decodes objects (kstatus insists).
	var top map[string]interface{}
	if err := utiljson.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("stdin is not a JSON object: %w", err)
	}
	u := &unstructured.Unstructured{Object: top}
	if !u.IsList() {
		return []*unstructured.Unstructured{u}, nil
	}
	list, err := u.ToList()
	if err != nil {
		return nil, err
	}
	out := make([]*unstructured.Unstructured, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out, nil
}

// argocd runs a health script as Argo CD does (util/lua): a fresh state
// with only the package, base and table libraries, the object as the global
// `obj`, and a returned table with `status` and `message`.
func argocd(script string, obj map[string]interface{}) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return "", "", err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	st, ok := ret.RawGetString("status").(lua.LString)
	if !ok {
		return "", "", fmt.Errorf("the script's result has no string status")
	}
	msg := ""
	if m, ok := ret.RawGetString("message").(lua.LString); ok {
		msg = string(m)
	}
	switch st {
	case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
	default:
		return "", "", fmt.Errorf("status %q is not an Argo CD health status", st)
	}
	return string(st), msg, nil
}

func toLua(l *lua.LState, v interface{}) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case map[string]interface{}:
		t := l.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	case []interface{}:
		t := l.NewTable()
		for _, e := range v {
			t.Append(toLua(l, e))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(v))
	}
}
