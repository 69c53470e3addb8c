import AttentionTensor
import LongAttention
import SequenceParallel
import SwiftMPI

/// Linear attention over a sequence split into contiguous shards across the ranks of `comm`
/// (queries by ``SequenceParallel/SequenceShards`` `.contiguous`, keys by
/// ``SequenceParallel/linearKeyRange(queries:keys:rank:)``). One collective per call:
///
/// - causal: this rank's key state `(S, z)` (``LongAttention/linearAttentionState(keys:values:featureMap:threads:)``),
///   an exclusive scan (`MPI_Exscan`) gives the state of every key before this rank's, then the local
///   chunked pass starts from it;
/// - non-causal: the states' sum over all ranks (all-reduce), read by the local queries.
///
/// `queries [B, H, n_r, d]`, `keys [B, Hkv, m_r, d]`, `values [B, Hkv, m_r, dv]` are this rank's
/// pieces; returns this rank's output rows `[B, H, n_r, dv]`, equal to single-process linear
/// attention's rows to float32 rounding. Feature maps `.elu` and `.relu`. Every rank must call it.
public func distributedLinearAttention(queries: Tensor, keys: Tensor, values: Tensor, comm: Communicator,
                                       featureMap: LinearFeatureMap = .elu, causal: Bool = false, epsilon: Float = 1e-6,
                                       chunkSize: Int = 64, threads: Int? = nil) throws -> (output: Tensor, collectiveSeconds: Double) {
    var state = try linearAttentionState(keys: keys, values: values, featureMap: featureMap, threads: threads)
    let p = state.unsafeMutableBaseAddress()
    let t0 = MPI.wtime()
    if causal {
        try comm.exclusiveScanSum(p, count: state.count)
    } else {
        try comm.allreduceSum(p, count: state.count)
    }
    let t = MPI.wtime() - t0
    let out: Tensor
    if causal {
        out = try linearAttention(queries: queries, keys: keys, values: values, initialState: state, featureMap: featureMap,
                                  causal: true, epsilon: epsilon, chunkSize: chunkSize, threads: threads)
    } else {
        out = try linearAttention(queries: queries, keys: try keys.rows(0..<0), values: try values.rows(0..<0), initialState: state,
                                  featureMap: featureMap, causal: false, epsilon: epsilon, chunkSize: chunkSize, threads: threads)
    }
    return (out, t)
}
