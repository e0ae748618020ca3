"""The run state moves from jsonb to canonical JSON text.

jsonb reorders keys, so a checksum of the state had to re-encode it on every load; as
text, the stored bytes are what the checksum covers, and loads are verified cheaply.
"""

import json

from django.db import migrations, models


def copy_state(apps, schema_editor):
    Run = apps.get_model("workflows", "Run")
    for run in Run.objects.only("pk", "state").iterator():
        text = json.dumps(run.state or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        Run.objects.filter(pk=run.pk).update(state_doc=text, state_checksum="")


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0002_state_integrity"),
    ]

    operations = [
        migrations.AddField(
            model_name="run",
            name="state_doc",
            field=models.TextField(
                blank=True, default="{}", help_text="The engine's state document, canonical JSON."
            ),
        ),
        migrations.RunPython(copy_state, migrations.RunPython.noop),
        migrations.RemoveField(model_name="run", name="state"),
    ]
