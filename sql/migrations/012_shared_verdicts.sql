-- Whether a judgment's verdict was shared: given once for an identical question, reference and
-- prediction and reused for this item (a verdict-cache hit, or a second item of the same content in
-- one send). NULL for judgments stored before this column (a cache hit among them still shows as
-- source 'cache') and for imported verdicts.
ALTER TABLE judgments ADD COLUMN shared BOOLEAN;
