"""The billing audit log is append-only, like the moderation log (one shared guard)."""

import pytest

from billing.models import BillingAuditEntry


def test_the_billing_audit_log_refuses_edits_and_deletes_bulk_or_single(carol):
    BillingAuditEntry.objects.create(
        actor=carol, action="refund", target_type="payment", target_id="1", reason="duplicate"
    )

    with pytest.raises(PermissionError):
        BillingAuditEntry.objects.all().delete()
    with pytest.raises(PermissionError):
        BillingAuditEntry.objects.filter(actor=carol).update(reason="rewritten")
    row = BillingAuditEntry.objects.get()
    with pytest.raises(PermissionError):
        row.delete()
    row.reason = "rewritten"
    with pytest.raises(PermissionError):
        row.save()
    assert BillingAuditEntry.objects.get().reason == "duplicate"
