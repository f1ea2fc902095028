// KServe's controller manager for the test stack: KServe's own reconcilers (InferenceService,
// TrainedModel, InferenceGraph) and admission webhooks from github.com/kserve/kserve, wired to
// a webhook server on 127.0.0.1 with the certificates the test stack made (--cert-dir).
// KServe's cmd/manager serves its webhooks on every interface, with no flag to change that.
package main

import (
	"context"
	"flag"
	"net/http"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/kserve/kserve/pkg/apis/serving/v1alpha1"
	"github.com/kserve/kserve/pkg/apis/serving/v1beta1"
	graphcontroller "github.com/kserve/kserve/pkg/controller/v1alpha1/inferencegraph"
	trainedmodelcontroller "github.com/kserve/kserve/pkg/controller/v1alpha1/trainedmodel"
	"github.com/kserve/kserve/pkg/controller/v1alpha1/trainedmodel/reconcilers/modelconfig"
	isvccontroller "github.com/kserve/kserve/pkg/controller/v1beta1/inferenceservice"
	kservescheme "github.com/kserve/kserve/pkg/scheme"
	"github.com/kserve/kserve/pkg/webhook/admission/pod"
	"github.com/kserve/kserve/pkg/webhook/admission/servingruntime"
)

func main() {
	var probeAddr, certDir string
	var webhookPort int
	flag.StringVar(&probeAddr, "health-probe-addr", "127.0.0.1:8081", "healthz/readyz address")
	flag.StringVar(&certDir, "cert-dir", "", "folder with tls.crt and tls.key for the webhook server")
	flag.IntVar(&webhookPort, "webhook-port", 9443, "webhook port on 127.0.0.1")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")
	fail := func(err error, what string) {
		log.Error(err, what)
		os.Exit(1)
	}

	cfg := ctrl.GetConfigOrDie()
	clientSet, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail(err, "clientset")
	}
	cacheOpts, err := isvccontroller.NewCacheOptions()
	if err != nil {
		fail(err, "cache options")
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: probeAddr,
		Cache:                  cacheOpts,
		WebhookServer: webhook.NewServer(webhook.Options{
			Host: "127.0.0.1", Port: webhookPort, CertDir: certDir,
		}),
	})
	if err != nil {
		fail(err, "manager")
	}
	if err := kservescheme.AddAll(mgr.GetScheme()); err != nil {
		fail(err, "schemes")
	}

	// The inferenceservice-config ConfigMap (in $POD_NAMESPACE, default "kserve") is read once.
	configMap, err := v1beta1.GetInferenceServiceConfigMap(context.Background(), clientSet)
	if err != nil {
		fail(err, "inferenceservice-config")
	}
	deployConfig, err := v1beta1.NewDeployConfig(configMap)
	if err != nil {
		fail(err, "deploy config")
	}
	ingressConfig, err := v1beta1.NewIngressConfig(configMap)
	if err != nil {
		fail(err, "ingress config")
	}
	if _, err := v1beta1.NewMultiNodeConfig(configMap); err != nil {
		fail(err, "multi-node config")
	}

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: clientSet.CoreV1().Events("")})
	recorder := func(component string) record.EventRecorder {
		return broadcaster.NewRecorder(mgr.GetScheme(), corev1.EventSource{Component: component})
	}

	if err := (&isvccontroller.InferenceServiceReconciler{
		Client:    mgr.GetClient(),
		Clientset: clientSet,
		Log:       ctrl.Log.WithName("v1beta1Controllers").WithName("InferenceService"),
		Scheme:    mgr.GetScheme(),
		Recorder:  recorder("v1beta1Controllers"),
	}).SetupWithManager(mgr, deployConfig, ingressConfig); err != nil {
		fail(err, "InferenceService controller")
	}
	if err := (&trainedmodelcontroller.TrainedModelReconciler{
		Client:                mgr.GetClient(),
		Log:                   ctrl.Log.WithName("v1beta1Controllers").WithName("TrainedModel"),
		Scheme:                mgr.GetScheme(),
		Recorder:              recorder("v1beta1Controllers"),
		ModelConfigReconciler: modelconfig.NewModelConfigReconciler(mgr.GetClient(), clientSet, mgr.GetScheme()),
	}).SetupWithManager(mgr); err != nil {
		fail(err, "TrainedModel controller")
	}
	if err := (&graphcontroller.InferenceGraphReconciler{
		Client:    mgr.GetClient(),
		Clientset: clientSet,
		Log:       ctrl.Log.WithName("v1alpha1Controllers").WithName("InferenceGraph"),
		Scheme:    mgr.GetScheme(),
		Recorder:  recorder("InferenceGraphController"),
	}).SetupWithManager(mgr, deployConfig); err != nil {
		fail(err, "InferenceGraph controller")
	}

	// The admission paths KServe's webhook configurations (config/webhook) name.
	hooks := mgr.GetWebhookServer()
	decoder := admission.NewDecoder(mgr.GetScheme())
	hooks.Register("/mutate-pods", &webhook.Admission{
		Handler: &pod.Mutator{Client: mgr.GetClient(), Clientset: clientSet, Decoder: decoder},
	})
	hooks.Register("/validate-serving-kserve-io-v1alpha1-clusterservingruntime", &webhook.Admission{
		Handler: &servingruntime.ClusterServingRuntimeValidator{Client: mgr.GetClient(), Decoder: decoder},
	})
	hooks.Register("/validate-serving-kserve-io-v1alpha1-servingruntime", &webhook.Admission{
		Handler: &servingruntime.ServingRuntimeValidator{Client: mgr.GetClient(), Decoder: decoder},
	})
	if err := ctrl.NewWebhookManagedBy(mgr).For(&v1alpha1.TrainedModel{}).
		WithValidator(&v1alpha1.TrainedModelValidator{}).Complete(); err != nil {
		fail(err, "TrainedModel webhook")
	}
	if err := ctrl.NewWebhookManagedBy(mgr).For(&v1alpha1.InferenceGraph{}).
		WithValidator(&v1alpha1.InferenceGraphValidator{}).Complete(); err != nil {
		fail(err, "InferenceGraph webhook")
	}
	if err := ctrl.NewWebhookManagedBy(mgr).For(&v1beta1.InferenceService{}).
		WithDefaulter(&v1beta1.InferenceServiceDefaulter{}).
		WithValidator(&v1beta1.InferenceServiceValidator{}).Complete(); err != nil {
		fail(err, "InferenceService webhooks")
	}

	// Ready once the webhook server serves: the test stack registers the webhooks then.
	started := func(req *http.Request) error { return hooks.StartedChecker()(req) }
	if err := mgr.AddHealthzCheck("healthz", started); err != nil {
		fail(err, "healthz")
	}
	if err := mgr.AddReadyzCheck("readyz", started); err != nil {
		fail(err, "readyz")
	}
	log.Info("starting")
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		fail(err, "manager stopped")
	}
}
