// The pause container of the node tier's pods: holds the pod's namespaces, waits for a signal.
module understudy.dev/tools/node/pause

go 1.25
