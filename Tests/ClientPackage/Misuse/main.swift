// Must NOT compile (make client-check builds it with CLIENT_MISUSE=1 and expects the error): a
// client cannot take a Tensor's escaping base pointer, only the scoped closure accessors.
import AttentionTensor

let t = try Tensor(zeros: [4])
let escaped = t.unsafeBaseAddress
print(escaped)
