import Foundation
import Prometheus

/// The server's Prometheus metrics (swift-prometheus' registry, rendered by `GET /metrics`).
public final class ServerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let requests: Counter
    let rejected: Counter
    let errors: Counter
    let promptTokens: Counter
    let completionTokens: Counter
    let timeToFirstToken: ValueHistogram
    let tokensPerSecond: ValueHistogram
    let activeSequences: Gauge
    let queuedSequences: Gauge
    let kvBytes: Gauge
    let kvBudget: Gauge
    let decodeRate: Gauge
    let decodeBatchRows: ValueHistogram
    let prefixHits: Counter
    let prefixTokens: Counter
    let prefixBytes: Gauge

    public init() {
        func d(_ name: String, _ help: String) -> MetricNameDescriptor { MetricNameDescriptor(metricName: name, unitName: "", helpText: help) }
        requests = registry.makeCounter(descriptor: d("attn_server_requests_total", "Completion requests accepted"))
        rejected = registry.makeCounter(descriptor: d("attn_server_requests_rejected_total", "Requests refused with 429 (pool and queue full)"))
        errors = registry.makeCounter(descriptor: d("attn_server_request_errors_total", "Requests answered with a 4xx or 5xx error"))
        promptTokens = registry.makeCounter(descriptor: d("attn_server_prompt_tokens_total", "Prompt tokens prefilled"))
        completionTokens = registry.makeCounter(descriptor: d("attn_server_completion_tokens_total", "Tokens generated"))
        timeToFirstToken = registry.makeValueHistogram(descriptor: d("attn_server_time_to_first_token_seconds", "From admission to the queue to the first token"), buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30])
        tokensPerSecond = registry.makeValueHistogram(descriptor: d("attn_server_request_tokens_per_second", "Decode rate of each finished request (tokens after the first / time)"), buckets: [1, 5, 10, 20, 50, 100, 200, 500, 1000])
        activeSequences = registry.makeGauge(descriptor: d("attn_server_active_sequences", "Sequences holding a KV cache"))
        queuedSequences = registry.makeGauge(descriptor: d("attn_server_queued_requests", "Requests waiting for a sequence"))
        kvBytes = registry.makeGauge(descriptor: d("attn_server_kv_cache_bytes", "Bytes of the active sequences' KV caches"))
        kvBudget = registry.makeGauge(descriptor: d("attn_server_kv_cache_budget_bytes", "The KV caches' memory budget"))
        decodeRate = registry.makeGauge(descriptor: d("attn_server_tokens_per_second", "Tokens generated per second over all sequences (last ~1 s)"))
        prefixHits = registry.makeCounter(descriptor: d("attn_server_prefix_cache_hits_total", "Requests whose prompt prefix came from a kept KV cache"))
        prefixTokens = registry.makeCounter(descriptor: d("attn_server_prefix_cache_tokens_total", "Prompt tokens taken from kept KV caches instead of prefilled"))
        prefixBytes = registry.makeGauge(descriptor: d("attn_server_prefix_cache_bytes", "Bytes of the kept (finished) sequences' KV caches"))
        decodeBatchRows = registry.makeValueHistogram(descriptor: d("attn_server_decode_batch_rows", "Sequences decoded together in one step (each weight read once for all)"), buckets: [1, 2, 4, 8, 16])
    }

    /// The text exposition format.
    public func render() -> String { registry.emitToString() }
}
