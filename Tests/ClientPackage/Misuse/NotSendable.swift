// Must NOT compile either: the mutable classes trained in place without synchronisation are not
// Sendable (make client-check expects one "does not conform to the 'Sendable' protocol" per type).
import LongContextModel

func requireSendable<T: Sendable>(_: T.Type) {}

func mutableTrainingState() {
    requireSendable(ParameterSet.self)
    requireSendable(AdamW.self)
    requireSendable(ForwardPass.self)
    requireSendable(LoRAAdapter.self)
    requireSendable(AttachedLoRA.self)
}
